"""pqcfs info VAULT: what the header says, without unlocking (so nothing is authenticated)."""

from __future__ import annotations


from pqcfs import vault as vault_mod
from pqcfs.cli import options
from pqcfs.errors import PqcfsError
from pqcfs.format import slots


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show a vault's format, suite, KDF, key slots and replicas (no unlock)")
    p.add_argument("vault", help="the vault: where its primary (or any) replica is, e.g. /media/usb1")
    p.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    p.set_defaults(func=run)


def run(args) -> int:
    header, _, _ = vault_mod.read_header(args.vault)
    try:
        state = vault_mod.read_state(args.vault, None)
    except PqcfsError:
        state = None
    replicas = []
    for r in header.replicas:
        hint = r.get("path_hint")
        present = bool(hint) and vault_mod.holds_vault(hint)
        replicas.append({**r, "present": present})
    doc = {"format": header.version, "vault_id": header.vault_id.hex(), "suite": header.suite,
           "block_size": header.block_size, "created": header.created, "features": header.features,
           "slots": [{"id": s["id"], "type": s["type"], "description": slots.describe(s)} for s in header.slots],
           "grants": len(header.grants), "replicas": replicas,
           "this_replica": state.replica_id if state else None,
           "generation": state.generation if state else None, "authenticated": False}
    lines = [f"vault {doc['vault_id']}  (format {header.version}, unverified until unlocked)",
             f"  suite:      {header.suite}", f"  block size: {header.block_size}",
             f"  created:    {header.created}", "  key slots:"]
    lines += [f"    {s['id']}: {s['description']}" for s in doc["slots"]]
    lines.append("  replicas:")
    for r in replicas:
        mark = " (this one)" if state and r["id"] == state.replica_id else ""
        lines.append(f"    {r['id']} {r['role']:<7} {'present' if r['present'] else 'missing'}  "
                     f"{r.get('path_hint') or ''} uuid={r.get('fs_uuid') or '-'}{mark}")
    if state:
        lines.append(f"  generation: {state.generation} ({'clean' if state.clean else 'not cleanly unmounted'})")
    options.emit(args, doc, "\n".join(lines))
    return 0
