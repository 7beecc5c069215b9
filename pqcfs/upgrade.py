"""`pqcfs upgrade`: a format 1 vault becomes format 2, in place, on every replica.

Format 2 adds one file per directory (its table, d.t) and changes nothing else a format 1
vault holds: names, keys, node headers and content blocks are read as they are (a
block's AAD binds the node id and block index, never the offset or format, so no block
is rewritten). The tables are built from the drives (modes and owners from the node
headers, times from the backing files, sizes from the ciphertext), written to every
replica, and only then does the vault header say format 2. An upgrade cut short leaves
a format 1 vault (the tables are ignored) and can simply be run again.
"""

from __future__ import annotations

from pqcfs import vault as vault_mod
from pqcfs.errors import DriveError, PqcfsError
from pqcfs.format import slots
from pqcfs.fs.tables import ALL, TabledFS
from pqcfs.fs.trees import open_tree


def upgrade(vault: vault_mod.UnlockedVault) -> int:
    """Returns how many directories got a table (0: the vault already is format 2)."""
    if vault.tables:
        return 0
    states = [vault_mod.read_state(drive, vault.root_key) for drive in vault.drives]
    if not all(s.clean for s in states) or len({(s.generation, tuple(s.lineage)) for s in states}) != 1:
        raise DriveError("the replicas are not all current and cleanly unmounted: mount the vault with every "
                         "drive (or run `pqcfs sync`) and unmount it first")
    uncommitted = [s for s in vault.header.slots if "commit" not in s]
    if uncommitted:
        # The slot that unlocked got its commitment at unlock: keep it for next time.
        vault.save_header()
        raise PqcfsError("format 2 requires key commitment, which these key slots predate: "
                         + ", ".join(f"slot {s['id']} ({slots.describe(s)})" for s in uncommitted)
                         + "; unlock once with each (e.g. `pqcfs upgrade VAULT --recovery`), which adds it, or "
                         "remove it (`pqcfs keys remove`), then upgrade again")
    vfs = open_tree(vault, kind=TabledFS, in_flux=ALL)
    built = vfs.settle_tree()
    if vfs.reconcile_skipped:
        raise PqcfsError(f"{vfs.reconcile_skipped} entr(ies) do not authenticate; the vault stays format 1 "
                         "(run `pqcfs fsck --repair`, then upgrade again)")
    vault.header.version = 2
    vault.save_header()
    return built
