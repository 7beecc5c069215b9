"""Snapshots and grants: a grantee sees snapshots of its directory taken while its grant
was live (not before it, not after a revoke), reads them with its identity alone, and a
read-write grantee's changes keep the versions the owner's snapshots hold."""

import json
import os
import stat

from pqcfs import revoke, sharing
from pqcfs.crypto.kdf import FLOOR, SALT_LEN, Argon2Params
from pqcfs.format import identity as identity_fmt
from pqcfs.format.identity import Identity
from pqcfs.fs.common import Caller
from pqcfs.session import grantee
from pqcfs.session.session import OfflineSession
from pqcfs.snapshots.manifest import load_subtree
from pqcfs.snapshots.store import DIR
from tests.api.test_cli import pqcfs
from tests.api.test_incremental_sync import unlock
from tests.api.test_snapshots import Open, read, snapshot_files

ME = Caller(uid=1000, gid=1000)
ID_PASS = "grantee identity passphrase"


def grantee_session(locations, ident, tmp_path):
    vault = unlock(locations)
    header, drives = vault.header, vault.drives
    opened = [sharing.open_grant(drives[0], r, header.vault_id, ident, None) for r in header.grants if "blob" in r]
    gv = grantee.GranteeVault(header, list(locations), opened, drives)
    session = grantee.GranteeSession(gv, str(tmp_path / "gmnt"), read_only=False)
    return vault, session, session.build()


def test_a_grantee_sees_the_snapshots_of_its_grant_and_no_others(locations, tmp_path):
    with Open(locations, tmp_path) as v:
        v.put("docs/plan.txt", b"plan v1")
        v.put("private.txt", b"the owner's alone")
        v.history.create(v.vfs, label="before-grant")
    ident = Identity.generate()
    id_file, pw = tmp_path / "bob.json", tmp_path / "bob-pw"
    kdf = Argon2Params(FLOOR["memory_kib"], FLOOR["iterations"], FLOOR["lanes"], os.urandom(SALT_LEN))
    id_file.write_bytes(identity_fmt.encode_file(ident, ID_PASS.encode(), kdf))
    pw.write_text(ID_PASS + "\n")
    owner = unlock(locations)
    grant = sharing.share(owner, "docs", ident.public, read_only=False, label="team docs")
    owner.close()
    with Open(locations, tmp_path) as v:
        v.put("docs/plan.txt", b"plan v2")
        during = v.history.create(v.vfs, label="during")
    as_bob = ["--identity", str(id_file), "--passfile", str(pw)]

    listed = json.loads(pqcfs("snapshot", "list", locations[0], *as_bob, "--json").stdout)["snapshots"]
    assert [(s["id"], s["directory"]) for s in listed] == [(during.snap_id.hex(), "team docs")]
    out = pqcfs("restore", locations[0], "plan.txt", "--snapshot", "latest", "--to", str(tmp_path / "p"), *as_bob)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "p").read_bytes() == b"plan v2"

    # Bob writes through a read-write grantee session: the version the owner's snapshot
    # holds is kept (a grantee cannot tell which versions are held, so it keeps them all).
    bob_vault, session, vfs = grantee_session(locations, ident, tmp_path)
    team = vfs.lookup(vfs.inodes.root, b"team docs")
    plan = vfs.lookup(team, b"plan.txt")
    vfs.inodes.remember(plan)
    content = vfs.open(plan, True)
    content.truncate(0)
    content.write(0, b"bob's rewrite")
    vfs.release(plan)
    vfs.unlink(team, b"plan.txt")
    vfs.create_file(team, b"new.txt", stat.S_IFREG | 0o644, ME, content=b"bob")
    session._finish()
    bob_vault.close()
    assert snapshot_files(locations, "during")["docs/plan.txt"] == b"plan v2"

    # The owner revokes: snapshots after it hold the re-keyed directory, which Bob's old key
    # does not open; the one taken during the grant still opens for it.
    old = unlock(locations)
    old_keys = [o.keys for o in [sharing.open_grant(old.drives[0], r, old.header.vault_id, ident, None)
                                 for r in old.header.grants if "blob" in r]][0]
    session = OfflineSession(old, "revoke")
    live, _ = session.start()
    revoke.revoke(old, live, revoke.find(old.header.grants, grant.grant_id.hex()), session.event)
    session.end()
    old.close()
    with Open(locations, tmp_path) as v:
        after = v.history.create(v.vfs, label="after-revoke")
        # The owner's next cleanup drops what Bob kept that no snapshot holds.
        v.history.collect()
    manifests = {n: read(os.path.join(locations[0], DIR, n)) for n in os.listdir(os.path.join(locations[0], DIR))
                 if n.endswith(".s")}
    assert load_subtree(manifests[after.snap_id.hex() + ".s"], old_keys) is None
    opened, _ = load_subtree(manifests[during.snap_id.hex() + ".s"], old_keys)
    assert {c.entry.p_name for rec in opened.dirs.values() for c in rec.children} == {b"plan.txt"}
    assert snapshot_files(locations, "after-revoke")["docs/new.txt"] == b"bob"
    assert snapshot_files(locations, "during")["docs/plan.txt"] == b"plan v2"
    r = pqcfs("snapshot", "list", locations[0], *as_bob)
    assert r.returncode != 0       # the grant is gone: nothing opens for Bob any more
