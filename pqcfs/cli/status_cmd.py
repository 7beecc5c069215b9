"""pqcfs status [MOUNTPOINT | VAULT]: mounted vaults and their replicas (dead mounts too),
or one vault's replica states. Exit 12 (DEGRADED) when anything shown is not healthy."""

from __future__ import annotations

import os
import pwd
import time

from pqcfs import vault as vault_mod
from pqcfs.cli import exitcodes, options
from pqcfs.errors import DamagedStructure, NotAVault, PqcfsError
from pqcfs.format import vault_header
from pqcfs.format import replica_state as rs
from pqcfs.remote import push as remote_push
from pqcfs.session import mounttable


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="mounted vaults (healthy, degraded or dead), or one vault's replicas; "
                                      "exit 12 when not healthy")
    p.add_argument("target", nargs="?", metavar="MOUNTPOINT|VAULT",
                   help="one mount, or a vault's replicas (no unlock; unverified)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _describe(mount: mounttable.Mount) -> dict:
    if mount.dead:
        return {"mountpoint": mount.mountpoint, "health": "dead", "pid": (mount.info or {}).get("pid"),
                "hint": f"the daemon is gone; `pqcfs umount {mount.mountpoint}` detaches the mount"}
    if mount.foreign:
        return {"mountpoint": mount.mountpoint, "health": "foreign", "uid": mount.owner,
                "hint": f"mounted by user {_user(mount.owner)}; `pqcfs status` as that user tells more"}
    if mount.info is None:
        return {"mountpoint": mount.mountpoint, "health": "elsewhere", "uid": mount.owner,
                "hint": "mounted and answering; its daemon keeps its runtime file in another session's runtime "
                        "directory, where `pqcfs status` tells more"}
    info = dict(mount.info)
    info["health"] = "degraded" if info.get("failed") or info.get("missing") else "healthy"
    return info


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def mounted() -> list[dict]:
    return [_describe(m) for m in mounttable.listing()]


def _mount_text(m: dict) -> str:
    if m["health"] == "dead":
        return f"{m['mountpoint']}: DEAD ({m['hint']})"
    if m["health"] in ("foreign", "elsewhere"):
        return f"{m['mountpoint']}: {m['hint']}"
    text = f"{m['mountpoint']}: vault {m['vault_id']} {m['health'].upper()}"
    if m["health"] == "degraded":
        text += f" (missing: {', '.join(m['missing']) or '-'}; failed: {', '.join(m['failed']) or '-'})"
    if m.get("single"):
        text += " (no backup: a single-drive vault)"
    text += "".join(f"\n  replica {loc}" for loc in m["replicas"])
    if m.get("user"):
        text += f"\n  belongs to {m['user']}"
    if m.get("log"):
        text += f"\n  daemon log {m['log']}"
    return text


def _header_damage(location: str | None) -> str | None:
    """Why a replica's copy of the header does not decode (None: it does, or no replica)."""
    if not location:
        return None
    try:
        vault_mod.read_header(location)
    except PqcfsError as e:
        return str(e)
    try:
        vault_mod.read_header(location, vault_header.SPARE_NAME)
    except NotAVault:
        return None      # made before spare copies: given one at the next writing command
    except PqcfsError as e:
        return f"its spare copy: {e}"
    return None


def vault_status(primary: str) -> dict:
    header, _ = vault_mod.header_anywhere(primary)
    try:
        ref = vault_mod.read_state(primary, None)
    except PqcfsError as e:
        raise DamagedStructure(f"{primary}: its replica state (pqcfs.state): {e}; `pqcfs fsck {primary} --repair` "
                               "rebuilds it") from None
    mounts = [m for m in mounted() if m.get("vault_id") == header.vault_id.hex()]
    replicas = []
    for r in header.replicas:
        # Where it is plugged in now (the place it was last seen, else found by its file
        # system's UUID), else where it was last seen.
        here = primary if r["id"] == ref.replica_id else \
            vault_mod.find_replica(r, header.vault_id, os.path.realpath(primary))
        entry = {"id": r["id"], "role": r["role"], "path": here or r.get("path_hint"), "present": False}
        try:
            state = vault_mod.read_state(here, None) if here else None
        except NotAVault:
            state = None
        except PqcfsError as e:
            # There, but its state does not even parse: present and damaged, never "not present".
            entry.update(present=True, clean=False, relation="unknown", state_damage=str(e),
                         header_damage=_header_damage(here))
            replicas.append(entry)
            continue
        if state is not None and state.replica_id == r["id"]:
            entry.update(present=True, generation=state.generation, clean=state.clean,
                         relation=rs.compare(ref, state), header_damage=_header_damage(here))
        replicas.append(entry)
    pending = [r["id"] for r in replicas if r.get("relation") == rs.STALE] + list(ref.missing)
    return {"vault_id": header.vault_id.hex(), "replicas": replicas, "pending_sync": sorted(set(pending)),
            "mounted_at": [m["mountpoint"] for m in mounts], "backup": len(replicas) > 1,
            "remotes": remote_push.status(header.vault_id, primary)}


def _remote_text(r: dict) -> str:
    if r.get("pushed_at"):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["pushed_at"]))
        text = f"  remote {r['name']} ({r['path']}): epoch {r['epoch']}, last reached {when}"
    else:
        text = f"  remote {r['name']} ({r['path']}): never pushed"
    if "changes_behind" in r:
        text += ("; up to date" if not r["changes_behind"] else
                 f"; {r['changes_behind']} changes ({r['bytes_behind'] / 2**20:.1f} MiB) behind")
    if r.get("error") and (r.get("failed_at") or 0) >= (r.get("pushed_at") or 0):
        text += f"; the last push FAILED: {r['error']}"
    return text


def run(args) -> int:
    target = args.target
    mount = mounttable.find(target) if target else None
    if target and mount is None:
        doc = vault_status(target)
        lines = [f"vault {doc['vault_id']} (unverified: no key was used)"]
        if doc["mounted_at"]:
            lines.append(f"  mounted at {', '.join(doc['mounted_at'])}")
        for r in doc["replicas"]:
            if not r["present"]:
                state = "not present"
            else:
                use = "in use (mounted)" if doc["mounted_at"] and not r["clean"] else (
                    "clean" if r["clean"] else "not cleanly unmounted")
                state = f"generation {r['generation']}, {use}, {r['relation']}" if "generation" in r else ""
                if r.get("state_damage"):
                    state = (f"its replica state is DAMAGED ({r['state_damage']}): `pqcfs fsck {args.target} "
                             "--repair` rebuilds it")
                elif r["relation"] == rs.DIVERGED:
                    state += (" (changed without the primary, or its replica state was altered: `pqcfs fsck "
                              f"{args.target} --repair` tells which)")
                if r.get("header_damage"):
                    state += (f"; its vault header is DAMAGED ({r['header_damage']}): `pqcfs fsck "
                              f"{args.target} --repair` rewrites it from the good copy")
            lines.append(f"  {r['id']} {r['role']:<7} {r['path']}: {state}")
        if len(doc["replicas"]) == 1:
            lines.append("  no backup: a single-drive vault (made with --single)")
        lines.append(f"  pending sync: {', '.join(doc['pending_sync']) or 'none'}")
        lines += [_remote_text(r) for r in doc["remotes"]]
        options.emit(args, doc, "\n".join(lines))
        in_use = bool(doc["mounted_at"])
        healthy = all(r["present"] and not r.get("header_damage") and not r.get("state_damage")
                      and r["relation"] == rs.SAME and (r["clean"] or in_use) for r in doc["replicas"]) \
            and not doc["pending_sync"]
        return exitcodes.OK if healthy else exitcodes.DEGRADED
    mounts = [_describe(mount)] if mount else mounted()
    options.emit(args, {"mounts": mounts}, "\n".join(_mount_text(m) for m in mounts) or "no pqcfs vault is mounted")
    return exitcodes.OK if all(m["health"] in ("healthy", "foreign", "elsewhere") for m in mounts) else exitcodes.DEGRADED
