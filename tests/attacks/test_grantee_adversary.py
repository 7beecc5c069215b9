"""The second adversary: a grantee, who holds a drive, their own identity and a grant.
Towards the owner they are an attacker too. Each test plays them through the real CLI
and a real mount, and checks that what they can write never steers the owner's mount,
tables, audit or rebuilds."""

import errno
import json
import os

import pytest

from pqcfs import sharing
from pqcfs.cli import exitcodes, grantee_mount
from pqcfs.cli import main as cli_main
from pqcfs import vault as vault_mod
from pqcfs.audit import log as audit_log
from pqcfs.crypto.keys import NodeKeys
from pqcfs.errors import CryptoError
from pqcfs.format import grants, names, node_header
from pqcfs.format.identity import decode_file
from pqcfs.session import grantee, grantee_intent
from pqcfs.fs.common import Caller, FsError
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


def test_a_planted_grantee_intent_log_does_not_switch_off_directory_authentication(tmp_path):
    """An intent log under a live grant's name on both drives (empty, junk, or 64 MiB of
    junk) used to make the owner's mount rebuild every directory table from the drives:
    a deleted entry then vanished without a word and fsck said clean."""
    work = str(tmp_path)
    with populated_vault(tmp_path) as v:
        grant_id, _, _ = share(v, work)
        name = grantee_intent.intent_name(bytes.fromhex(grant_id))
        for location in (v.primary, v.backup):
            os.unlink(top_level_file(location))        # the attacker's change, outside the grant
        for planted in ("empty", "junk", "huge"):
            for location in (v.primary, v.backup):
                with open(os.path.join(location, name), "wb") as f:
                    if planted == "junk":
                        f.write(b"D  0000\nF tree 1234\n" * 1000)
                    elif planted == "huge":
                        for _ in range(64):
                            f.write(os.urandom(1 << 20))
            v.mount(timeout=60)      # a 64 MiB log once held the owner's mount for minutes
            try:
                with pytest.raises(OSError) as e:  # the table still names it, and it is reported gone
                    open(os.path.join(v.mountpoint, "top.txt")).close()
                assert e.value.errno == errno.EIO, planted
            finally:
                v.umount()
            for location in (v.primary, v.backup):
                assert not os.path.exists(os.path.join(location, name))
                assert any(n.endswith(name) for n in quarantined(location))
        assert audit_events(v).count("grantee-intent-set-aside") == 3
        assert owner(v, "fsck", check=False).returncode != 0


def test_an_intent_log_naming_paths_outside_the_grant_is_set_aside(tmp_path):
    """Even authenticated under the grant's own key (which the grantee holds), a log that
    names a directory outside the granted one is not acted on."""
    work = str(tmp_path)
    with populated_vault(tmp_path) as v:
        grant_id, bob, bob_pass = share(v, work)
        gid = bytes.fromhex(grant_id)
        key = subtree_key(v, grant_id, bob, bob_pass)
        ikey = grantee_intent.intent_key(key, gid)
        for location in (v.primary, v.backup):
            os.unlink(top_level_file(location))
            lines = [f"B - {intent_mod._mac(ikey, 'B', '-')}", f"D  {intent_mod._mac(ikey, 'D', '')}"]
            with open(os.path.join(location, grantee_intent.intent_name(gid)), "w") as f:
                f.write("\n".join(lines) + "\n")
        v.mount()
        try:
            with pytest.raises(OSError) as e:
                open(os.path.join(v.mountpoint, "top.txt")).close()
            assert e.value.errno == errno.EIO
        finally:
            v.umount()
        assert "grantee-intent-set-aside" in audit_events(v)


def test_a_read_only_grantees_writes_are_refused_by_the_daemon_and_reach_the_owners_audit(tmp_path):
    """The kernel keeps a read-only grant's mount read-only even with `-o rw`; writes that
    reach the daemon anyway (another program on /dev/fuse, a mount option) are refused by
    the daemon itself, and the refusal reaches the owner's audit log at the owner's next
    unlock, with the recipient's sessions."""
    work = str(tmp_path)
    with populated_vault(tmp_path) as v:
        grant_id, bob, bob_pass = share(v, work, "projects/acme", "--read-only")
        mnt = os.path.join(work, "bob-mnt")
        os.mkdir(mnt)
        mount_args = ["mount", v.primary, mnt, "--identity", bob, "--passfile", bob_pass, "--backup", v.backup]
        drives.pqcfs(*mount_args, "-o", "rw")
        try:
            with open("/proc/mounts") as f:
                options = next(line.split()[3] for line in f if line.split()[1] == mnt)
            assert "ro" in options.split(","), options
            with pytest.raises(OSError) as e:
                open(f"{mnt}/acme/plan.txt", "a").close()
            assert e.value.errno == errno.EROFS
        finally:
            drives.pqcfs("umount", mnt)

        # The daemon without a kernel in front of it: every change is refused by VaultFS.
        session = grantee_mount.prepare(cli_main.build_parser().parse_args(mount_args))
        try:
            vfs = session.build()
            acme = vfs.lookup(vfs.inodes.root, b"acme")
            plan = vfs.lookup(acme, b"plan.txt")
            for change in (lambda: vfs.mkdir(acme, b"new", 0o755, Caller(0, 0)),
                           lambda: vfs.unlink(acme, b"plan.txt"),
                           lambda: vfs.truncate(plan, 0),
                           lambda: vfs.set_xattr(plan, b"user.x", b"1")):
                with pytest.raises(FsError) as e:
                    change()
                assert e.value.errno == errno.EROFS
            session._finish()
        finally:
            session.unlock()
        v.mount()
        v.umount()
        shown = json.loads(owner(v, "audit", "show", "--json").stdout)["records"]
        mine = [r for r in shown if r.get("grant") == grant_id]
        assert {"grantee-unlock", "grantee-write-refused", "grantee-unmount"} <= {r["event"] for r in mine}
        assert max(r.get("writes_refused", 0) for r in mine if r["event"] == "grantee-unmount") == 4
        # Seen once: the next unlock copies nothing again.
        v.mount()
        v.umount()
        again = json.loads(owner(v, "audit", "show", "--json").stdout)["records"]
        assert sum(r["event"] == "grantee-write-refused" for r in again) == 1, [r for r in again if r["event"].startswith("grantee")]


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_grantee_log_deleted_or_cut_after_the_owner_saw_it_is_reported(tmp_path, how):
    work = str(tmp_path)
    with populated_vault(tmp_path) as v:
        grant_id, bob, bob_pass = share(v, work)
        mnt = os.path.join(work, "bob-mnt")
        os.mkdir(mnt)
        for _ in range(2):
            drives.pqcfs("mount", v.primary, mnt, "--identity", bob, "--passfile", bob_pass, "--backup", v.backup,
                         "--ro")
            drives.pqcfs("umount", mnt)
        v.mount()                     # the owner sees the grantee's log (and records its head)
        v.umount()
        name = grantee.audit_name(bytes.fromhex(grant_id))
        for location in (v.primary, v.backup):
            path = os.path.join(location, name)
            if how == "deleted":
                os.unlink(path)
            else:                     # the recipient's last session cut off (they hold the key)
                with open(path, "rb") as f:
                    data = f.read()
                records = audit_log.parse(data)
                with open(path, "wb") as f:
                    f.write(data[:records[-1].offset])
        verify = owner(v, "audit", "verify", check=False)
        assert verify.returncode == exitcodes.CRYPTO, verify.stdout + verify.stderr
        assert how in verify.stdout
        v.mount()                     # a writing unlock records it in the owner's own log ...
        v.umount()
        events = audit_events(v)
        assert "grantee-log-tampered" in events
        verify = owner(v, "audit", "verify", check=False)   # ... where it stays reported
        assert verify.returncode == exitcodes.CRYPTO and how in verify.stdout


# --- key lineage: nothing leaves a granted directory with a key the grantee can derive ---

def header_of(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(node_header.HEADER_LEN)


def derivable(subtree_keys, c_root: str) -> list:
    """Every key a holder of subtree_keys derives for the directories under c_root (the
    granted directory's ciphertext as it is now: what they see on the drive)."""
    keys, stack = [subtree_keys], [(subtree_keys, c_root)]
    while stack:
        k, path = stack.pop()
        for name in os.listdir(path):
            child = os.path.join(path, name)
            if names.is_entry(name) and os.path.isdir(child):
                ck = k.child(header_of(os.path.join(child, names.DIR_ID_NAME))[8:24])
                keys.append(ck)
                stack.append((ck, child))
    return keys


def owner_c_path(v, p_path: str) -> str:
    """Where p_path's ciphertext is, as the owner's keys find it."""
    vault = vault_mod.unlock([v.primary, v.backup], vault_mod.Credentials(
        passphrase=drives.PASSPHRASE.encode()))
    try:
        return sharing.resolve(sharing.owner_tree(vault), p_path).c_path
    finally:
        vault.close()


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def opens_any(keys, location_dir: str) -> list[str]:
    """Ciphertext headers under location_dir that any of keys (or a child key of theirs) opens."""
    opened = []
    for dirpath, _, filenames in os.walk(location_dir):
        for name in filenames:
            if not (names.is_entry(name) or name == names.DIR_ID_NAME):
                continue
            data = header_of(os.path.join(dirpath, name))
            if len(data) < node_header.HEADER_LEN or data[:4] not in (b"PQCF", b"PQCD", b"PQCL"):
                continue
            node_id = data[8:24]
            for k in keys:
                for candidate in (k, k.child(node_id)):
                    try:
                        node_header.open_meta(candidate.meta_key, data)
                        opened.append(os.path.join(dirpath, name))
                    except CryptoError:
                        pass
    return opened


def test_nothing_moves_or_links_out_of_a_granted_directory_with_its_key(tmp_path):
    """While acme is granted, a directory made in it can not be renamed out (EXDEV: `mv`
    copies it, under keys of its new place) and a file can not be hard-linked out; after
    the revoke, nothing written to the moved copy opens with any key Bob could derive."""
    work = str(tmp_path)
    with populated_vault(tmp_path) as v:
        grant_id, bob, bob_pass = share(v, work)
        key = subtree_key(v, grant_id, bob, bob_pass)
        v.mount()
        try:
            acme, other = f"{v.mountpoint}/projects/acme", f"{v.mountpoint}/projects/other"
            os.makedirs(f"{acme}/made-here")
            with open(f"{acme}/made-here/f.txt", "w") as f:
                f.write("made while shared")
            with pytest.raises(OSError) as e:
                os.rename(f"{acme}/made-here", f"{other}/made-here")
            assert e.value.errno == errno.EXDEV
            with pytest.raises(OSError) as e:
                os.link(f"{acme}/plan.txt", f"{other}/plan-link.txt")
            assert e.value.errno == errno.EXDEV
            os.rename(f"{acme}/made-here", f"{acme}/renamed-inside")       # inside: a plain rename
            drives.run("mv", f"{acme}/renamed-inside", f"{other}/moved")   # mv falls back to a copy
            assert read_text(f"{other}/moved/f.txt") == "made while shared"
        finally:
            v.umount()
        header = vault_mod.read_header(v.primary)[0]
        acme_id = bytes.fromhex(next(r for r in header.grants if r["id"] == grant_id)["node"])
        bob_keys = derivable(NodeKeys(acme_id, key), os.path.join(v.primary, "tree", owner_c_path(v, "/projects/acme")))
        owner(v, "revoke", grant_id)
        v.mount()
        try:
            with open(f"{v.mountpoint}/projects/other/moved/after.txt", "w") as f:
                f.write("written after the revoke")
        finally:
            v.umount()
        moved = os.path.join(v.primary, "tree", owner_c_path(v, "/projects/other/moved"))
        assert opens_any(bob_keys, moved) == []


def test_a_directory_moved_out_before_the_share_is_rekeyed_when_sharing(tmp_path):
    """Moved out of acme before acme was shared, `esc` kept a key derived from acme's:
    the share re-keys it first, so the grant's key derives nothing outside acme."""
    work = str(tmp_path)
    with populated_vault(tmp_path) as v:
        v.mount()
        try:
            os.makedirs(f"{v.mountpoint}/projects/acme/esc/deeper")
            with open(f"{v.mountpoint}/projects/acme/esc/deeper/secret.txt", "w") as f:
                f.write("left acme long ago")
            os.rename(f"{v.mountpoint}/projects/acme/esc", f"{v.mountpoint}/projects/other/esc")
        finally:
            v.umount()
        before = header_of(os.path.join(v.primary, "tree", owner_c_path(v, "/projects/other/esc"),
                                        names.DIR_ID_NAME))[8:24]
        acme_c = os.path.join(v.primary, "tree", owner_c_path(v, "/projects/acme"))
        bob, bob_pass = make_identity(work, "bob")
        proc = owner(v, "share", "projects/acme", "--to", bob + ".pub", "--json")
        assert "re-keyed before sharing" in proc.stderr, proc.stderr
        grant_id = json.loads(proc.stdout)["grant"]
        header = vault_mod.read_header(v.primary)[0]
        acme_id = bytes.fromhex(next(r for r in header.grants if r["id"] == grant_id)["node"])
        bob_keys = derivable(NodeKeys(acme_id, subtree_key(v, grant_id, bob, bob_pass)), acme_c)
        esc = os.path.join(v.primary, "tree", owner_c_path(v, "/projects/other/esc"))
        assert opens_any(bob_keys, esc) == []
        assert header_of(os.path.join(esc, names.DIR_ID_NAME))[8:24] != before     # a new node, new keys
        v.mount()
        try:
            assert read_text(f"{v.mountpoint}/projects/other/esc/deeper/secret.txt") == "left acme long ago"
        finally:
            v.umount()
        assert "lineage-rekeyed" in audit_events(v)


def test_revoke_reaches_a_directory_that_left_under_an_older_pqcfs(tmp_path):
    """A vault where a directory left acme while it was granted (no EXDEV then): the
    revoke finds it by its key and re-keys it too."""
    from pqcfs.session.session import Session
    work = str(tmp_path)
    with populated_vault(tmp_path) as v:
        grant_id, bob, bob_pass = share(v, work)
        vault = vault_mod.unlock([v.primary, v.backup], vault_mod.Credentials(passphrase=drives.PASSPHRASE.encode()))
        s = Session(vault, os.path.join(work, "mnt"))
        s.prepare()
        vfs = s.build()
        try:
            vfs.grant_roots = set()          # what an older pqcfs did: no lineage check
            acme = sharing.resolve(vfs, "/projects/acme")
            other = sharing.resolve(vfs, "/projects/other")
            d = vfs.mkdir(acme, b"left", 0o755, Caller(0, 0))
            vfs.create_file(d, b"old.txt", 0o100644, Caller(0, 0), content=b"before the move")
            vfs.rename(acme, b"left", other, b"left")
        finally:
            s._finish()
            vault.close()
        header = vault_mod.read_header(v.primary)[0]
        acme_id = bytes.fromhex(next(r for r in header.grants if r["id"] == grant_id)["node"])
        acme_c = os.path.join(v.primary, "tree", owner_c_path(v, "/projects/acme"))
        bob_keys = derivable(NodeKeys(acme_id, subtree_key(v, grant_id, bob, bob_pass)), acme_c)
        left = os.path.join(v.primary, "tree", owner_c_path(v, "/projects/other/left"))
        assert opens_any(bob_keys, left)         # the hole this closes: Bob's keys open it
        owner(v, "revoke", grant_id)
        v.mount()
        try:
            with open(f"{v.mountpoint}/projects/other/left/new.txt", "w") as f:
                f.write("written after the revoke")
            assert read_text(f"{v.mountpoint}/projects/other/left/old.txt") == "before the move"
        finally:
            v.umount()
        left = os.path.join(v.primary, "tree", owner_c_path(v, "/projects/other/left"))
        assert opens_any(bob_keys, left) == []
        assert "lineage-rekeyed" in audit_events(v)


def test_hostile_events_in_a_grantee_log_never_break_the_owners_unlock(tmp_path):
    """The grantee holds their log's key: events that are not JSON objects, that reuse the
    owner record's own keys, that carry odd names or are huge are copied tamed (or as
    'unreadable'), and the owner's mount and audit verify go on."""
    from pqcfs import grantee_log
    work = str(tmp_path)
    with populated_vault(tmp_path) as v:
        grant_id, bob, bob_pass = share(v, work)
        keys = grantee_log.audit_keys(subtree_key(v, grant_id, bob, bob_pass), bytes.fromhex(grant_id))
        vault_id = vault_mod.read_header(v.primary)[0].vault_id
        hostile = [["not", "an", "object"], {"event": "Evil Name!\nX", "grantee_seq": 7, "grant": "x", "time": 3},
                   {"event": "big", "blob": "x" * 100_000}]
        data, prev = b"", audit_log.ZERO
        for seq, payload in enumerate(hostile):
            record = audit_log.encode_event(keys, vault_id, seq, prev, payload)
            data, prev = data + record, record[-audit_log.MAC_LEN:]
        for location in (v.primary, v.backup):
            with open(os.path.join(location, grantee_log.audit_name(bytes.fromhex(grant_id))), "wb") as f:
                f.write(data)
        v.mount()
        v.umount()
        mine = [r for r in json.loads(owner(v, "audit", "show", "--json").stdout)["records"]
                if r.get("grant") == grant_id and r["event"] != "share"]
        assert [r["event"] for r in mine] == ["grantee-unreadable", "grantee-unnamed", "grantee-big"]
        assert mine[1]["grantee_seq"] == 1 and "blob" not in mine[2]
        assert owner(v, "audit", "verify", check=False).returncode == 0
