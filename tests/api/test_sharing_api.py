"""Sharing without a kernel mount: share, revoke through an offline session, and a
header rolled back to a copy that still lists the revoked grant."""

import stat

from pqcfs.fs.trees import open_tree
from pqcfs import revoke, sharing
from pqcfs import vault as vault_mod
from pqcfs.format.identity import Identity
from pqcfs.session.session import OfflineSession
from pqcfs.fs.vaultfs import Caller
from pqcfs.store import seen
from tests.conftest import PASSPHRASE

ME = Caller(uid=1000, gid=1000)


def test_a_rolled_back_header_does_not_bring_a_revoked_grant_back(new_vault):
    vault, _ = new_vault
    fs = open_tree(vault)
    shared = fs.mkdir(fs.inodes.root, b"shared", 0o755, ME)
    fs.create_file(shared, b"note.txt", stat.S_IFREG | 0o644, ME, content=b"for bob, for a while")
    fs.settle()
    bob = Identity.generate()
    grant = sharing.share(vault, "shared", bob.public, read_only=True)
    with open(f"{vault.locations[0]}/pqcfs.vault", "rb") as f:
        with_grant = f.read()

    session = OfflineSession(vault, "revoke")
    vfs, _ = session.start()
    record = revoke.find(vault.header.grants, grant.grant_id.hex())
    result = revoke.revoke(vault, vfs, record, session.event)
    session.end()
    assert result.files == 1 and grant.grant_id.hex() in seen.revoked(vault.header.vault_id, vault.root_key)

    # Both drives get the old header back: it is valid (MAC and all) and lists the grant.
    for location in vault.locations:
        with open(f"{location}/pqcfs.vault", "wb") as f:
            f.write(with_grant)
    vault.close()
    again = vault_mod.unlock(vault.locations, vault_mod.Credentials(passphrase=PASSPHRASE))
    assert [r["id"] for r in again.header.grants if "blob" in r] == [grant.grant_id.hex()]
    assert sharing.revoke_resurrected(again, writable=True) == [grant.grant_id.hex()]
    assert not [r for r in again.header.grants if "blob" in r]
    reread = vault_mod.unlock(vault.locations, vault_mod.Credentials(passphrase=PASSPHRASE))
    assert not [r for r in reread.header.grants if "blob" in r]    # written to the drives too
    again.close()
    reread.close()
