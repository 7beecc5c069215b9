"""pqcfs status [VAULT]: mounted vaults and their replicas; or one vault's replica states."""

from __future__ import annotations

import glob
import json
import os

from pqcfs import vault as vault_mod
from pqcfs.cli import options
from pqcfs.errors import PqcfsError
from pqcfs.format import replica_state as rs
from pqcfs.fs import session as session_mod


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="mounted vaults: replicas, degraded or healthy, pending sync")
    p.add_argument("vault", nargs="?", help="show this vault's replicas instead (no unlock; unverified)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def mounted() -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(session_mod.RUNTIME_DIR, "mount-*.json"))):
        try:
            with open(path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if not _alive(info.get("pid", -1)):
            continue
        info["health"] = "degraded" if info.get("failed") or info.get("missing") else "healthy"
        out.append(info)
    return out


def vault_status(primary: str) -> dict:
    header, _, _ = vault_mod.read_header(primary)
    ref = vault_mod.read_state(primary, None)
    replicas = []
    for r in header.replicas:
        hint = r.get("path_hint")
        entry = {"id": r["id"], "role": r["role"], "path": hint, "present": False}
        try:
            state = vault_mod.read_state(hint, None) if hint else None
        except PqcfsError:
            state = None
        if state is not None and state.replica_id == r["id"]:
            entry.update(present=True, generation=state.generation, clean=state.clean,
                         relation=rs.compare(ref, state))
        replicas.append(entry)
    pending = [r["id"] for r in replicas if r.get("relation") == rs.STALE] + list(ref.missing)
    return {"vault_id": header.vault_id.hex(), "replicas": replicas, "pending_sync": sorted(set(pending))}


def run(args) -> int:
    if args.vault:
        doc = vault_status(args.vault)
        lines = [f"vault {doc['vault_id']} (unverified: no key was used)"]
        for r in doc["replicas"]:
            state = (f"generation {r['generation']}, {'clean' if r['clean'] else 'not clean'}, {r['relation']}"
                     if r["present"] else "not present")
            lines.append(f"  {r['id']} {r['role']:<7} {r['path']}: {state}")
        lines.append(f"  pending sync: {', '.join(doc['pending_sync']) or 'none'}")
        options.emit(args, doc, "\n".join(lines))
        return 0
    mounts = mounted()
    lines = [f"{m['mountpoint']}: vault {m['vault_id']} {m['health'].upper()}"
             + (f" (missing: {', '.join(m['missing'])}; failed: {', '.join(m['failed']) or '-'})"
                if m["health"] == "degraded" else "")
             + "".join(f"\n  replica {loc}" for loc in m["replicas"]) for m in mounts]
    options.emit(args, {"mounts": mounts}, "\n".join(lines) or "no pqcfs vault is mounted")
    return 0
