"""The second adversary: a grantee, who holds a drive, their own identity and a grant.
Towards the owner they are an attacker too. Each test plays them through the real CLI
and a real mount, and checks that what they can write never steers the owner's mount,
tables, audit or rebuilds."""

import errno
import json
import os

import pytest

from pqcfs import sharing
from pqcfs import vault as vault_mod
from pqcfs.format import grants, names
from pqcfs.format.identity import decode_file
from pqcfs.fs import grantee
from pqcfs.store import intent as intent_mod
from pqcfs.store.drive import QUARANTINE_DIR
from tests.mounted import drives
from tests.mounted.test_sharing import make_identity, owner, populated_vault

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]


def share(v, work, path="projects/acme", *extra):
    bob, bob_pass = make_identity(work, "bob")
    doc = json.loads(owner(v, "share", path, "--to", bob + ".pub", "--label", "acme", "--json", *extra).stdout)
    return doc["grant"], bob, bob_pass


def top_level_file(location) -> str:
    """The ciphertext of the vault's only top-level file (populate's top.txt)."""
    tree = os.path.join(location, "tree")
    found = [n for n in os.listdir(tree) if names.is_entry(n) and os.path.isfile(os.path.join(tree, n))]
    assert len(found) == 1, found
    return os.path.join(tree, found[0])


def quarantined(location) -> list[str]:
    folder = os.path.join(location, QUARANTINE_DIR)
    return os.listdir(folder) if os.path.isdir(folder) else []


def subtree_key(v, grant_id: str, identity_file: str, passfile: str) -> bytes:
    """What the grantee holds: the granted directory's key, as their identity opens it."""
    with open(identity_file, "rb") as id_file, open(passfile) as f:
        identity = decode_file(id_file.read(), f.read().rstrip("\n").encode())
    header = vault_mod.read_header(v.primary)[0]
    record = next(r for r in header.grants if r["id"] == grant_id)
    parsed = grants.verify(sharing.unb64(record["blob"]), header.vault_id)
    return grants.open_key(parsed, identity)[0]


def audit_events(v) -> list[str]:
    return [r.get("event") for r in json.loads(owner(v, "audit", "show", "--json").stdout)["records"]]


@pytest.mark.parametrize("planted", ["empty", "junk", "huge"])
def test_a_planted_grantee_intent_log_does_not_switch_off_directory_authentication(tmp_path, planted):
    """An intent log under a live grant's name on both drives (empty, junk, or 64 MiB of
    junk) used to make the owner's mount rebuild every directory table from the drives:
    a deleted entry then vanished without a word and fsck said clean."""
    work = str(tmp_path)
    with populated_vault(tmp_path) as v:
        grant_id, _, _ = share(v, work)
        for location in (v.primary, v.backup):
            os.unlink(top_level_file(location))        # the attacker's change, outside the grant
            with open(os.path.join(location, grantee.intent_name(bytes.fromhex(grant_id))), "wb") as f:
                if planted == "junk":
                    f.write(b"D  0000\nF tree 1234\n" * 1000)
                elif planted == "huge":
                    for _ in range(64):
                        f.write(os.urandom(1 << 20))
        v.mount(timeout=60)      # a 64 MiB log once held the owner's mount for minutes
        try:
            with pytest.raises(OSError) as e:      # the table still names it, and it is reported gone
                open(os.path.join(v.mountpoint, "top.txt")).close()
            assert e.value.errno == errno.EIO
        finally:
            v.umount()
        for location in (v.primary, v.backup):
            assert not os.path.exists(os.path.join(location, grantee.intent_name(bytes.fromhex(grant_id))))
            assert any(n.endswith(grantee.intent_name(bytes.fromhex(grant_id))) for n in quarantined(location))
        assert "grantee-intent-set-aside" in audit_events(v)
        assert owner(v, "fsck", check=False).returncode != 0


def test_an_intent_log_naming_paths_outside_the_grant_is_set_aside(tmp_path):
    """Even authenticated under the grant's own key (which the grantee holds), a log that
    names a directory outside the granted one is not acted on."""
    work = str(tmp_path)
    with populated_vault(tmp_path) as v:
        grant_id, bob, bob_pass = share(v, work)
        gid = bytes.fromhex(grant_id)
        key = subtree_key(v, grant_id, bob, bob_pass)
        ikey = grantee.intent_key(key, gid)
        for location in (v.primary, v.backup):
            os.unlink(top_level_file(location))
            lines = [f"B - {intent_mod._mac(ikey, 'B', '-')}", f"D  {intent_mod._mac(ikey, 'D', '')}"]
            with open(os.path.join(location, grantee.intent_name(gid)), "w") as f:
                f.write("\n".join(lines) + "\n")
        v.mount()
        try:
            with pytest.raises(OSError) as e:
                open(os.path.join(v.mountpoint, "top.txt")).close()
            assert e.value.errno == errno.EIO
        finally:
            v.umount()
        assert "grantee-intent-set-aside" in audit_events(v)
