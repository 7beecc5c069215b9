"""pqcfs upgrade VAULT: bring a vault to the newest format (only when asked)."""

from __future__ import annotations

from pqcfs import upgrade
from pqcfs.cli import exitcodes, options
from pqcfs.format import vault_header


def add_parser(sub) -> None:
    p = sub.add_parser("upgrade", help=f"convert a vault to format {vault_header.VERSION} in place, on every "
                       "replica (older pqcfs versions can not open it afterwards)")
    p.add_argument("vault", help="the vault: where its primary (or any) replica is, e.g. /media/usb1")
    p.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    options.add_unlock_options(p)
    options.add_replica_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    vault = options.unlock(args, require_all=True)   # takes the vault lock: never while mounted
    before = vault.header.version
    built = upgrade.upgrade(vault)
    if built:
        vault.audit.append("upgrade", format_from=before, format_to=vault.header.version,
                                    directories=built)
        text = f"upgraded from format {before} to {vault.header.version} ({built} directories)"
    else:
        text = f"already format {vault.header.version}; nothing to do"
    options.emit(args, {"format_before": before, "format": vault.header.version, "directories": built}, text)
    return exitcodes.OK
