"""The tamper-evident audit log: a pure record format (log.py), a mirrored appender
(writer.py) and the host-side log of events that happen before unlock (host.py)."""
