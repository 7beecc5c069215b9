"""`pqcfs export`: a deep copy of one directory into a new vault for someone else, opened
by their identity only. Above sharing and the session (it runs one on the new vault)."""

from __future__ import annotations

from pqcfs import sharing
from pqcfs import vault as vault_mod
from pqcfs.audit.writer import AuditLog
from pqcfs.errors import NoSuchPath
from pqcfs.format.identity import PublicIdentity
from pqcfs.fs.copier import Copier
from pqcfs.session.session import OfflineSession


def export(vault, p_path: str, locations: list[str], recipient: PublicIdentity, drive_infos=None,
           progress_factory=None):
    """A new vault on locations holding a copy of the directory at p_path, opened by
    recipient's identity only (no passphrase, no recovery code: its maker keeps no way
    in). Returns the new vault's id and the copier's counts."""
    src = sharing.owner_tree(vault)
    node = sharing.resolve(src, p_path)
    if not node.is_dir:
        raise NoSuchPath(f"{p_path}: not a directory (export the directory that holds it)")
    dest, _ = vault_mod.create(locations, passphrase=None, identity=recipient, recovery=False,
                               block_size=vault.header.block_size, drive_infos=drive_infos)
    try:
        audit = AuditLog(dest)
        audit.append("created-by-export", source_vault=vault.header.vault_id.hex(), path=p_path,
                     recipient=recipient.fingerprint)
        dest.audit = audit
        session = OfflineSession(dest, "export")
        dst, _ = session.start()
        try:
            size, files = sharing.tree_size(src, node)
            progress = progress_factory(f"export {p_path}", size, files) if progress_factory else None
            copier = Copier(src, dst, progress)
            try:
                copier.tree(node, dst.inodes.root)
            finally:
                if progress:
                    progress.close()
        finally:
            session.end()
    finally:
        dest.close()
    return dest.header.vault_id, copier
