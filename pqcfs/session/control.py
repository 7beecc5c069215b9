"""The mount daemon's control socket: how `pqcfs sync` reaches a mounted vault.

A Unix socket beside the runtime file (/run/pqcfs/mount-<id>.sock, mode 0600 in a 0700
directory: only the user who mounted, or root, can connect). One request per
connection, one JSON object per line:

  -> {"op": "sync", "backup": PATH or null}
  <- {"progress": {"bytes", "bytes_total", "files", "files_total"}}   (while it runs)
  <- {"results": [{"replica", "location", "ok", ...}]}                 (last line)

No key material and no plaintext name ever crosses it.
"""

from __future__ import annotations

import json
import logging
import os
import socket

import trio

log = logging.getLogger(__name__)
MAX_REQUEST = 64 << 10


def socket_path(runtime_path: str) -> str:
    return runtime_path[:-len(".json")] + ".sock"


async def serve(session, path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(path)
        sock.listen(4)
    except OSError as e:
        # Without it `pqcfs sync` can not reach this mount; the mount itself goes on.
        log.error("no control socket at %s (%s): `pqcfs sync` can not reach this mount", path, e)
        sock.close()
        return
    finally:
        os.umask(old_umask)
    try:
        await trio.serve_listeners(lambda stream: _handle(session, stream), [trio.SocketListener(sock)])
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


async def _send(stream, message: dict) -> None:
    await stream.send_all(json.dumps(message).encode() + b"\n")


async def _handle(session, stream) -> None:
    try:
        data = b""
        while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
        try:
            request = json.loads(data)
            if not isinstance(request, dict) or request.get("op") != "sync":
                raise ValueError("unknown request")
            backup = request.get("backup")
            if backup is not None and not isinstance(backup, str):
                raise ValueError("backup must be a path")
        except ValueError as e:
            await _send(stream, {"error": f"bad request: {e}"})
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_report_progress, session, stream)
            results = await session.rejoin.run(location=backup)
            nursery.cancel_scope.cancel()
        await _send(stream, {"results": results, "missing": list(session.missing)})
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass   # the client went away
    except Exception as e:  # noqa: BLE001 - a failed request must never take the mount down
        log.exception("control request failed")
        try:
            await _send(stream, {"error": str(e)})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    finally:
        await stream.aclose()


async def _report_progress(session, stream) -> None:
    try:
        while True:
            await trio.sleep(0.5)
            if session.rejoin.progress:
                await _send(stream, {"progress": dict(session.rejoin.progress)})
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass   # the client went away: the sync itself goes on


def request_sync(path: str, backup: str | None, on_progress=None) -> dict:
    """Ask the daemon at path to bring its missing replicas back (blocks until done)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(json.dumps({"op": "sync", "backup": backup}).encode() + b"\n")
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
