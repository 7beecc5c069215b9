"""The mount daemon's control socket: how `pqcfs sync` reaches a mounted vault (the
client side and the protocol; the daemon's side is control_server.py).

A Unix socket beside the runtime file (/run/pqcfs/mount-<id>.sock, mode 0600 in a 0700
directory: only the user who mounted, or root, can connect). One request per
connection, one JSON object per line:

  -> {"op": "sync", "backup": PATH or null}
  <- {"progress": {"bytes", "bytes_total", "files", "files_total"}}   (while it runs)
  <- {"results": [{"replica", "location", "ok", ...}]}                 (last line)

  -> {"op": "push", "remote": NAME or null, "bwlimit": RATE or null}
  <- {"progress": {"remote", "bytes", "bytes_total"}}                  (while it uploads)
  <- {"results": [{"remote", "epoch", "objects_sent", ...}]} or {"error", "kind"}

  -> {"op": "snapshot", "action": "create", "label": TEXT}           <- {"snapshot": {"id", "created", ...}}
  -> {"op": "snapshot", "action": "delete", "ids": [ID or label]}    <- {"deleted", "freed_files", "freed_bytes"}
  -> {"op": "snapshot", "action": "policy", "policy": {"keep", "max_space"} or null}
                                                                     <- {"policy", "thinned"}
  (any of them may answer {"error", "kind"})

No key material ever crosses it; a snapshot's label does (the user's own words).
"""

from __future__ import annotations

import json
import logging
import socket

log = logging.getLogger(__name__)
MAX_REQUEST = 64 << 10


def socket_path(runtime_path: str) -> str:
    return runtime_path[:-len(".json")] + ".sock"


def request_sync(path: str, backup: str | None, on_progress=None) -> dict:
    """Ask the daemon at path to bring its missing replicas back (blocks until done)."""
    return request(path, {"op": "sync", "backup": backup}, on_progress)


def request(path: str, message: dict, on_progress=None) -> dict:
    """One request to the daemon at path; its progress lines go to on_progress, its last
    line is the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(json.dumps(message).encode() + b"\n")
        buffer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the mount daemon closed the connection without an answer")
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                message = json.loads(line)
                if "progress" in message:
                    if on_progress:
                        on_progress(message["progress"])
                    continue
                return message
