"""The daemon's side of the control socket (control.py has the protocol): one request per
connection, served in the mount's trio loop."""

from __future__ import annotations

import json
import logging
import os
import socket

import trio

from pqcfs.errors import PqcfsError
from pqcfs.session.control import MAX_REQUEST

log = logging.getLogger(__name__)


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
            if not isinstance(request, dict) or request.get("op") not in ("sync", "push", "snapshot"):
                raise ValueError("unknown request")
            for key in ("backup", "remote", "bwlimit"):
                if request.get(key) is not None and not isinstance(request[key], str):
                    raise ValueError(f"{key} must be a string")
        except ValueError as e:
            await _send(stream, {"error": f"bad request: {e}"})
            return
        if request["op"] == "snapshot":
            try:
                answer = session.snapshots.handle(request)
            except (PqcfsError, ValueError, KeyError, TypeError) as e:
                answer = {"error": str(e), "kind": type(e).__name__}
            await _send(stream, answer)
            return
        if request["op"] == "push":
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_report_progress, lambda: session.offsite.progress, stream)
                try:
                    results = await session.offsite.push(request.get("remote"), request.get("bwlimit"))
                except PqcfsError as e:
                    await _send(stream, {"error": str(e), "kind": type(e).__name__})
                    return
                finally:
                    nursery.cancel_scope.cancel()
            await _send(stream, {"results": results})
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_report_progress, lambda: session.rejoin.progress, stream)
            results = await session.rejoin.run(location=request.get("backup"))
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


async def _report_progress(progress, stream) -> None:
    try:
        while True:
            await trio.sleep(0.5)
            now = progress()
            if now:
                await _send(stream, {"progress": dict(now)})
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass   # the client went away: the sync itself goes on
