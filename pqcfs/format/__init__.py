"""Pure persisted formats: bytes in, bytes out. Every structure carries its version."""
