"""systemd's readiness protocol (sd_notify): a datagram to $NOTIFY_SOCKET.

A `Type=notify` service is started only once its process says READY=1: pqcfs says it
when the FUSE mount answers, so units ordered after the vault see a usable mount. Without
$NOTIFY_SOCKET (not under systemd) this does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(*fields: str) -> bool:
    """Send fields (e.g. "READY=1", "STATUS=...") to systemd; False when not under it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):           # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
        except OSError:
            return False
    return True
