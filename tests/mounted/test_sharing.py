"""Sharing through the real CLI on stand-in drives: Alice shares, Bob mounts, and what
Bob's key material opens (only the granted subtree)."""

import contextlib
import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time

import pytest

from pqcfs import sharing
from pqcfs import vault as vault_mod
from pqcfs.audit import log as audit_log
from pqcfs.crypto.keys import root_dir_keys
from pqcfs.errors import CryptoError, PqcfsError
from pqcfs.format import names, node_header
from pqcfs.format.identity import PublicIdentity, decode_file
from pqcfs.session import grantee
from pqcfs.session import session as session_mod
from pqcfs.store.drive import Drive
from tests.mounted import drives

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]
BOB_PASS = "bob's own identity passphrase"


def make_identity(work, name):
    passfile = os.path.join(work, f"{name}.pass")
    with open(passfile, "w") as f:
        f.write(f"{name}'s own identity passphrase\n")
    path = os.path.join(work, f"{name}.id")
    drives.pqcfs("identity", "new", "--file", path, "--passfile", passfile)
    drives.pqcfs("identity", "export", "--file", path, "-o", path + ".pub")
    return path, passfile


def owner(v, *args, check=True):
    """A command the owner runs: its words (one or two, e.g. `audit verify`), the vault, the rest."""
    words = 2 if args[0] == "audit" else 1
    return drives.pqcfs(*args[:words], v.primary, *args[words:], "--passfile", v.passfile, "--backup", v.backup,
                        check=check)


def grantee_mount(v, mountpoint, identity, passfile, *extra, check=True):
    return drives.pqcfs("mount", v.primary, mountpoint, "--identity", identity, "--passfile", passfile,
                        "--backup", v.backup, *extra, check=check)


def umount(mountpoint):
    drives.pqcfs("umount", mountpoint)


def one_line(proc, code):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("pqcfs: "), proc.stderr


def populate(root):
    os.makedirs(f"{root}/projects/acme/sub")
    os.makedirs(f"{root}/projects/other")
    with open(f"{root}/projects/acme/plan.txt", "w") as f:
        f.write("the plan")
    with open(f"{root}/projects/acme/sub/deep.bin", "wb") as f:
        f.write(os.urandom(3) * 50_000)
    os.link(f"{root}/projects/acme/plan.txt", f"{root}/projects/acme/plan-link.txt")
    os.symlink("plan.txt", f"{root}/projects/acme/to-plan")
    with open(f"{root}/projects/other/secret.txt", "w") as f:
        f.write("not for bob")
    with open(f"{root}/top.txt", "w") as f:
        f.write("not for bob either")


def snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir",)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", f.read())
    return out


# Each test runs on a pair of stand-in drives; the pairs mix ext4 and exFAT so that each
# file system is the primary in some tests and the backup in others (USB sticks ship
# with exFAT), at the cost of one vault per test rather than one per file system.
EXFAT_PRIMARY = (("exfat", "ext4"),)
EXT4_PRIMARY = (("ext4", "exfat"),)


@contextlib.contextmanager
def populated_vault(tmp_path, fstypes=("ext4", "ext4"), size=128, fill=None):
    """A vault on two stand-in drives holding populate()'s tree (and fill's), unmounted."""
    with drives.standin_vault(str(tmp_path), (fstypes[0], size), (fstypes[1], size)) as v:
        v.mount()
        if fill:
            fill(v.mountpoint)
        populate(v.mountpoint)
        v.mount_tree = snapshot(v.mountpoint)
        v.umount()
        yield v


@pytest.mark.parametrize("fstypes", EXFAT_PRIMARY)
def test_alice_shares_bob_mounts_exactly_the_subtree(tmp_path, fstypes):
    work = str(tmp_path)
    with populated_vault(tmp_path, fstypes) as v:
        expected = snapshot_of(v.mount_tree, "projects/acme")
        bob, bob_pass = make_identity(work, "bob")

        share = owner(v, "share", "projects/acme", "--to", bob + ".pub", "--read-only", "--label", "acme")
        grant_id = share.stdout.strip()
        assert len(grant_id) == 32 and "owner key" in share.stderr
        listed = json.loads(owner(v, "grants", "--json").stdout)
        [g] = listed["grants"]
        assert (g["id"], g["path"], g["label"], g["rights"]) == (grant_id, "/projects/acme", "acme", "read-only")

        # An ancestor renamed, and the directory itself moved to another parent (its key
        # then travels as an override there): the grant still finds and opens it.
        v.mount()
        os.rename(f"{v.mountpoint}/projects", f"{v.mountpoint}/work")
        os.mkdir(f"{v.mountpoint}/work/clients")
        os.rename(f"{v.mountpoint}/work/acme", f"{v.mountpoint}/work/clients/acme")
        v.umount()

        bob_mnt = os.path.join(work, "bob-mnt")
        os.mkdir(bob_mnt)
        proc = grantee_mount(v, bob_mnt, bob, bob_pass)
        assert "trusting the owner key" in proc.stderr
        try:
            assert os.listdir(bob_mnt) == ["acme"]      # each grant a directory named by its label
            shown = f"{bob_mnt}/acme"
            assert snapshot(shown) == expected
            assert os.stat(f"{shown}/plan.txt").st_nlink == 2
            for attempt in (lambda: open(f"{shown}/new", "w"), lambda: os.mkdir(f"{shown}/d"),
                            lambda: os.unlink(f"{shown}/plan.txt"), lambda: os.truncate(f"{shown}/plan.txt", 0),
                            lambda: os.chmod(f"{shown}/plan.txt", 0o600),
                            lambda: os.setxattr(f"{shown}/plan.txt", "user.x", b"1"),
                            lambda: os.rename(f"{shown}/plan.txt", f"{shown}/x")):
                with pytest.raises(OSError) as e:
                    attempt()
                assert e.value.errno == errno.EROFS
        finally:
            umount(bob_mnt)

        # The path the owner sees now, and a stale locator brought up to date.
        listed = json.loads(owner(v, "grants", "--json").stdout)
        assert listed["grants"][0]["path"] == "/work/clients/acme"

        # Bob's grantee session is in the grant's own log, which the owner verifies.
        verify = owner(v, "audit", "verify")
        assert f"grant {grant_id}" in verify.stdout and "grantee-unlock" in verify.stdout

        # At the crypto level, with everything Bob holds: the subtree key opens its own
        # directory and nothing beside or above it.
        with open(bob_pass) as f, open(bob, "rb") as id_file:
            identity = decode_file(id_file.read(), f.read().rstrip("\n").encode())
        header = vault_mod.read_header(v.primary)[0]
        [(record, _)] = sharing.grants_for(header.grants, identity.public)
        for location in (v.primary, v.backup):
            with Drive(location) as drive:
                opened = sharing.open_grant(drive, record, header.vault_id, identity, None)
                assert_opens_nothing_else(drive, opened, header.vault_id)


def assert_opens_nothing_else(drive, opened, vault_id):
    """Try the subtree key and every key Bob can derive on each directory header outside
    the subtree, the root id file and the owner's audit log."""
    inside = opened.c_path
    outside, checked = [], 0
    for dirpath, dirnames, _ in os.walk(os.path.join(drive.location, "tree")):
        rel = os.path.relpath(dirpath, os.path.join(drive.location, "tree"))
        rel = "" if rel == "." else rel
        if rel == inside or rel.startswith(inside + "/") or rel.startswith("h.links"):
            continue
        outside.append(rel)
    assert "" in outside and len(outside) >= 3     # the root, work/, work/other
    for rel in outside:
        data = drive.read(f"tree/{rel}/{names.DIR_ID_NAME}" if rel else f"tree/{names.DIR_ID_NAME}", 88)
        node_id = node_header.parse_prefix(data, node_header.MAGIC_DIR)
        for keys in (opened.keys, opened.keys.child(node_id), root_dir_keys(opened.keys.key, node_id)):
            with pytest.raises(CryptoError):
                node_header.open_meta(keys.meta_key, data)
            checked += 1
        for name in os.listdir(os.path.join(drive.location, "tree", rel)):
            if names.is_entry(name) and not names.is_long(name):
                with pytest.raises((CryptoError, PqcfsError)):
                    names.decrypt_name(opened.keys, name)
    assert checked >= 9
    data = drive.read(audit_log.FILE_NAME, audit_log.MAX_FILE)
    records = audit_log.parse(data)
    for key in (opened.keys.key, opened.keys.meta_key, opened.keys.content_key):
        assert not audit_log.verify(data, audit_log.AuditKeys.from_root(key), vault_id, None).intact
        with pytest.raises(Exception):
            audit_log.decrypt(audit_log.AuditKeys.from_root(key), vault_id, records[-1])
    # The grantee log opens under the grant's key only.
    verdict, events = grantee.verify_log(drive, opened.keys.key, opened.grant.grant_id, vault_id)
    assert verdict.intact and [e["event"] for e in events] == ["grantee-unlock", "grantee-unmount"]


def test_refused_grants_say_so_in_one_line(tmp_path):
    work = str(tmp_path)
    with drives.standin_vault(work, ("ext4", 64), ("ext4", 64)) as v:
        v.mount()
        os.makedirs(f"{v.mountpoint}/shared/inner")
        v.umount()
        bob, bob_pass = make_identity(work, "bob")
        carol, carol_pass = make_identity(work, "carol")
        mnt = os.path.join(work, "bob-mnt")
        os.mkdir(mnt)

        one_line(owner(v, "share", "no/such/dir", "--to", bob + ".pub", check=False), 14)
        one_line(owner(v, "share", "shared", "--to", "pqcfs-pub1:xwing:AAAA:BBBB", check=False), 5)
        one_line(owner(v, "share", "shared", "--to", bob + ".pub", "--expires", "2001-01-01", check=False), 1)
        one_line(owner(v, "share", "shared", "--to", bob + ".pub", "--expires", "soon", check=False), 1)
        # No grant for Carol: a clear refusal.
        one_line(grantee_mount(v, mnt, carol, carol_pass, check=False), 6)

        # A grant that has expired by the time Bob mounts is refused (and said so).
        vault = vault_mod.unlock([v.primary, v.backup], vault_mod.Credentials(passphrase=drives.PASSPHRASE.encode()))
        with open(bob + ".pub") as f:
            sharing.share(vault, "shared", PublicIdentity.decode(f.read()), read_only=True,
                          expires=int(time.time()) + 2)
        vault.close()
        time.sleep(2.5)
        proc = grantee_mount(v, mnt, bob, bob_pass, check=False)
        one_line(proc, 13)
        assert "expired" in proc.stderr
        # Bob's key opened the grant, so the refusal is in the grant's own log too.
        assert "grantee-unlock-failed" in owner(v, "audit", "verify").stdout
        vault = vault_mod.unlock([v.primary, v.backup], vault_mod.Credentials(passphrase=drives.PASSPHRASE.encode()))
        vault.header.grants.clear()     # the owner takes it out again (without a re-key: the test's own shortcut)
        vault.save_header()
        vault.close()

        # A grant that expires in a day works today; Bob's wrong passphrase is refused.
        owner(v, "share", "shared", "--to", bob + ".pub", "--expires", "1d")
        wrong = os.path.join(work, "wrong")
        with open(wrong, "w") as f:
            f.write("not it\n")
        one_line(grantee_mount(v, mnt, bob, wrong, check=False), 6)
        grantee_mount(v, mnt, bob, bob_pass)
        assert os.listdir(mnt) == ["shared"] and os.listdir(f"{mnt}/shared") == ["inner"]
        umount(mnt)

        # Every flipped byte of the grant's blob is refused (a sample here: the unit tests
        # flip each one) with the damage or refusal exit code, never a traceback.
        with open(os.path.join(v.primary, "pqcfs.vault"), "rb") as f:
            original = f.read()
        header = vault_mod.read_header(v.primary)[0]
        blob = header.grants[0]["blob"]
        for at in (40, len(blob) // 2, len(blob) - 3):
            flipped = blob[:at] + ("A" if blob[at] != "A" else "B") + blob[at + 1:]
            data = original.replace(blob.encode(), flipped.encode())
            for location in (v.primary, v.backup):
                with open(os.path.join(location, "pqcfs.vault"), "wb") as f:
                    f.write(data)
            proc = grantee_mount(v, mnt, bob, bob_pass, check=False)
            assert proc.returncode in (5, 13), proc.stderr
            one_line(proc, proc.returncode)
        # ... and the owner sees the header was edited: each drive's first copy is named, and
        # rewritten from the drives' spare copies, which the editor did not touch.
        edited = owner(v, "grants", check=False)
        assert edited.returncode == 0, edited.stderr
        assert all(f"the vault header on {location} was damaged" in edited.stderr for location in (v.primary, v.backup))
        for location in (v.primary, v.backup):
            with open(os.path.join(location, "pqcfs.vault"), "wb") as f:
                f.write(original)

        # A grant signed by someone else than the pinned owner (another vault's owner key).
        proc = grantee_mount(v, mnt, bob, bob_pass, "--owner", "00" * 16, check=False)
        one_line(proc, 13)
        assert "not by the vault owner" in proc.stderr


def daemon_pid(mountpoint):
    with open(session_mod.runtime_file(mountpoint)) as f:
        return json.load(f)["pid"]


@pytest.mark.parametrize("fstypes", EXT4_PRIMARY)
def test_read_write_grant_bob_edits_alice_sees_and_a_killed_session_is_repaired(tmp_path, fstypes):
    work = str(tmp_path)
    with populated_vault(tmp_path, fstypes) as v:
        bob, bob_pass = make_identity(work, "bob")
        owner(v, "share", "projects/acme", "--to", bob + ".pub", "--label", "acme")
        mnt = os.path.join(work, "bob-mnt")
        os.mkdir(mnt)

        # Without the backup (its vault hidden, as if another stick were plugged in), a
        # read-write grant does not mount read-write; read-only it does.
        hidden = os.path.join(v.backup, "pqcfs.vault")
        os.rename(hidden, hidden + ".away")
        try:
            proc = drives.pqcfs("mount", v.primary, mnt, "--identity", bob, "--passfile", bob_pass, check=False)
            one_line(proc, 7)
            assert "every drive of the vault" in proc.stderr
            drives.pqcfs("mount", v.primary, mnt, "--identity", bob, "--passfile", bob_pass, "--ro")
            assert "plan.txt" in os.listdir(f"{mnt}/acme")
            umount(mnt)
        finally:
            os.rename(hidden + ".away", hidden)

        grantee_mount(v, mnt, bob, bob_pass)
        mnt_root, mnt = mnt, f"{mnt}/acme"
        try:
            with open(f"{mnt}/plan.txt", "a") as f:
                f.write(" (bob was here)")
            os.mkdir(f"{mnt}/bobs")
            with open(f"{mnt}/bobs/notes.md", "w") as f:
                f.write("notes by bob")
            os.rename(f"{mnt}/sub/deep.bin", f"{mnt}/bobs/deep.bin")
            os.unlink(f"{mnt}/to-plan")
            expected = snapshot(mnt)
        finally:
            umount(mnt_root)
        assert not [n for n in os.listdir(v.primary) if n.startswith("pqcfs.intent.")]   # ended cleanly

        v.mount()
        try:
            assert snapshot(f"{v.mountpoint}/projects/acme") == expected
            with open(f"{v.mountpoint}/projects/other/secret.txt") as f:
                assert f.read() == "not for bob"
        finally:
            v.umount()
        fsck = owner(v, "fsck", check=False)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr

        # Bob's daemon killed after an fsync: the owner's next mount repairs from the grant's
        # intent log, and nothing fsynced is lost.
        grantee_mount(v, mnt_root, bob, bob_pass)
        with open(f"{mnt}/bobs/fsynced.bin", "wb") as f:
            f.write(b"kept" * 10_000)
            f.flush()
            os.fsync(f.fileno())
        pid = daemon_pid(mnt_root)
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.05)
        subprocess.run(["fusermount3", "-u", "-z", mnt_root], capture_output=True)
        os.unlink(session_mod.runtime_file(mnt_root))
        assert [n for n in os.listdir(v.primary) if n.startswith("pqcfs.intent.")]
        v.mount()
        try:
            with open(f"{v.mountpoint}/projects/acme/bobs/fsynced.bin", "rb") as f:
                assert f.read() == b"kept" * 10_000
        finally:
            v.umount()
        assert not [n for n in os.listdir(v.primary) if n.startswith("pqcfs.intent.")]
        fsck = owner(v, "fsck", check=False)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        events = owner(v, "audit", "show").stdout
        assert "grantee-session-repaired" in events


def owner_sees(v, before, check=lambda root: None):
    """The owner's mount holds exactly the tree snapshot `before` (and passes check), and
    fsck finds nothing wrong."""
    v.mount()
    try:
        assert snapshot(v.mountpoint) == before
        assert check(v.mountpoint) is not False
    finally:
        v.umount()
    fsck = owner(v, "fsck", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def every_ciphertext_under(location, c_path):
    """(relative path, bytes) of every file under the subtree's ciphertext directory."""
    base = os.path.join(location, "tree", c_path)
    for dirpath, _, filenames in os.walk(base):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                yield os.path.relpath(os.path.join(dirpath, name), base), f.read()


def assert_key_opens_nothing(location, c_path, old_keys):
    """Bob's old subtree key, and every key he could derive from it for any node id he
    sees, opens no header, name, table or block under the re-keyed directory."""
    from pqcfs.crypto.content import ContentCipher
    checked = 0
    for rel, data in every_ciphertext_under(location, c_path):
        name = os.path.basename(rel)
        if len(data) >= 88 and data[:4] in (b"PQCF", b"PQCD", b"PQCL"):
            node_id = data[8:24]
            for keys in (old_keys, old_keys.child(node_id)):
                with pytest.raises(CryptoError):
                    node_header.open_meta(keys.meta_key, data[:88])
                if data[:4] == b"PQCF" and len(data) > 88:
                    cipher = ContentCipher(keys.content_key, node_id, 4096)
                    block = data[88:88 + 4096 + 28]
                    with pytest.raises(CryptoError):
                        cipher.open(0, block, 0 if len(data) <= 88 + 4096 + 28 else 1)
            checked += 1
        if names.is_entry(name) and not names.is_long(name):
            with pytest.raises((CryptoError, PqcfsError)):
                names.decrypt_name(old_keys, name)
    assert checked >= 5


@pytest.mark.parametrize("fstypes", EXFAT_PRIMARY)
def test_revoke_rekeys_the_subtree_and_keeps_the_other_grant(tmp_path, fstypes):
    work = str(tmp_path)
    with drives.standin_vault(work, (fstypes[0], 128), (fstypes[1], 128)) as v:
        v.mount()
        populate(v.mountpoint)
        os.setxattr(f"{v.mountpoint}/projects/acme/plan.txt", "user.tag", b"important")
        before = snapshot(v.mountpoint)
        v.umount()
        bob, bob_pass = make_identity(work, "bob")
        carol, carol_pass = make_identity(work, "carol")
        bob_grant = owner(v, "share", "projects/acme", "--to", bob + ".pub", "--read-only").stdout.strip()
        carol_grant = owner(v, "share", "projects/acme", "--to", carol + ".pub").stdout.strip()
        with open(os.path.join(v.primary, "pqcfs.vault"), "rb") as f:
            old_header_bytes = f.read()
        with open(bob_pass) as f, open(bob, "rb") as id_file:
            bob_identity = decode_file(id_file.read(), f.read().rstrip("\n").encode())
        header = vault_mod.read_header(v.primary)[0]
        [(bob_record, _)] = sharing.grants_for(header.grants, bob_identity.public)
        with Drive(v.primary) as drive:
            bob_opened = sharing.open_grant(drive, bob_record, header.vault_id, bob_identity, None)

        revoked = owner(v, "revoke", bob_grant, "--allow-fixed", "--json")
        doc = json.loads(revoked.stdout)
        assert doc["revoked"] == bob_grant and doc["rewrapped"] == 1 and doc["files"] == 4
        assert doc["bytes"] >= 150_000

        listed = json.loads(owner(v, "grants", "--json").stdout)["grants"]
        assert [g["id"] for g in listed] == [carol_grant]
        events = owner(v, "audit", "show").stdout
        for word in ("share", "revoke-started", "revoke-progress", "revoke"):
            assert word in events
        assert events.count("revoke-progress") >= 4     # each quarter of the copy, and its end

        # Alice's data is what it was, byte for byte (xattrs too), and fsck is clean.
        def plan_kept(root):
            assert os.getxattr(f"{root}/projects/acme/plan.txt", "user.tag") == b"important"
            assert os.stat(f"{root}/projects/acme/plan.txt").st_nlink == 2
        owner_sees(v, before, plan_kept)

        # Bob: no grant any more; his old key opens nothing under the directory on
        # either drive, and his old grant, rolled back into the header, opens nothing.
        mnt = os.path.join(work, "mnt-x")
        os.mkdir(mnt)
        one_line(grantee_mount(v, mnt, bob, bob_pass, check=False), 6)
        header = vault_mod.read_header(v.primary)[0]
        new_c_path = "/".join([r for r in header.grants if r["id"] == carol_grant][0]["locator"])
        for location in (v.primary, v.backup):
            assert_key_opens_nothing(location, new_c_path, bob_opened.keys)
        with open(os.path.join(v.primary, "pqcfs.vault"), "rb") as f:
            new_header_bytes = f.read()
        for data in (old_header_bytes, new_header_bytes):   # rolled back, then as it was
            for location in (v.primary, v.backup):
                with open(os.path.join(location, "pqcfs.vault"), "wb") as f:
                    f.write(data)
            if data is old_header_bytes:
                proc = grantee_mount(v, mnt, bob, bob_pass, "--grant", bob_grant, check=False)
                one_line(proc, 13)

        # Carol's grant was re-wrapped: she still mounts it, read-write.
        grantee_mount(v, mnt, carol, carol_pass, "--grant", carol_grant)
        try:
            assert snapshot(f"{mnt}/acme") == snapshot_of(before, "projects/acme")
        finally:
            umount(mnt)


def snapshot_of(snap, prefix):
    return {k[len(prefix) + 1:]: v for k, v in snap.items() if k.startswith(prefix + "/")}


def big_subtree(root, files=24, size=512 * 1024, small=0):
    os.makedirs(f"{root}/projects/acme/data")
    for n in range(files):
        with open(f"{root}/projects/acme/data/f{n:03d}", "wb") as f:
            f.write(os.urandom(size))
    for n in range(small):
        if n % 50 == 0:
            os.makedirs(f"{root}/projects/acme/small/{n // 50}")
        with open(f"{root}/projects/acme/small/{n // 50}/s{n}", "wb") as f:
            f.write(os.urandom(n % 3000))
    with open(f"{root}/projects/keep.txt", "w") as f:
        f.write("outside the share")


def start_revoke(v, grant):
    return subprocess.Popen([sys.executable, "-m", "pqcfs", "revoke", v.primary, grant, "--passfile", v.passfile,
                             "--backup", v.backup, "--allow-fixed"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


KILL_SEEDS = int(os.environ.get("PQCFS_REVOKE_KILL_SEEDS", "2"))


@pytest.mark.parametrize("seed", range(KILL_SEEDS))
def test_revoke_killed_at_random_points_is_finished_by_the_next_run(tmp_path, seed):
    rng = random.Random(seed)
    work = str(tmp_path)
    with drives.standin_vault(work, ("ext4", 192), ("ext4", 192)) as v:
        v.mount()
        big_subtree(v.mountpoint, files=16, small=800)
        populate(v.mountpoint)
        before = snapshot(v.mountpoint)
        v.umount()
        bob, _ = make_identity(work, "bob")
        carol, carol_pass = make_identity(work, "carol")
        bob_grant = owner(v, "share", "projects/acme", "--to", bob + ".pub").stdout.strip()
        carol_grant = owner(v, "share", "projects/acme", "--to", carol + ".pub").stdout.strip()
        kills = 0
        # Odd seeds: killed once in the copy, and the owner's next mount finishes it.
        for attempt in range(1 if seed % 2 else 5):
            files_at_start = count_files(v.primary)
            proc = start_revoke(v, bob_grant)
            if attempt % 2 == 0:
                # Killed in the copy: once it has written a random number of files.
                target = rng.randint(1, 700)
                deadline = time.monotonic() + 30
                while proc.poll() is None and time.monotonic() < deadline \
                        and count_files(v.primary) - files_at_start < target:
                    time.sleep(0.005)
            else:
                # Killed at a random time: the copy, the exchange or the removal of the old.
                time.sleep(rng.uniform(0.4, 1.6))
            if proc.poll() is not None:
                out, err = proc.communicate()
                assert proc.returncode == 0, err
                break
            proc.kill()
            proc.communicate()
            kills += 1
        if seed % 2:
            mounted = v.mount()
            assert "finishing the revoke" in mounted.stderr and "Traceback" not in mounted.stderr
            v.umount()
        else:
            resumed = drives.pqcfs("revoke", v.primary, "--resume", "--passfile", v.passfile, "--backup", v.backup,
                                   "--allow-fixed")
            assert "Traceback" not in resumed.stderr
        listed = json.loads(owner(v, "grants", "--json").stdout)["grants"]
        assert [g["id"] for g in listed] == [carol_grant], (kills, listed)
        assert kills >= 1, "no kill landed: the revoke ran faster than the kill points"
        owner_sees(v, before, lambda root: not [n for n in os.listdir(f"{root}/projects") if n.startswith(".pqcfs")])
        mnt = os.path.join(work, "carol-mnt")
        os.mkdir(mnt)
        grantee_mount(v, mnt, carol, carol_pass)
        try:
            assert snapshot(f"{mnt}/acme") == snapshot_of(before, "projects/acme")
        finally:
            umount(mnt)


def count_files(location):
    return sum(len(files) for _, _, files in os.walk(os.path.join(location, "tree")))


def test_backup_pulled_mid_revoke_then_brought_up_to_date(tmp_path):
    from tests.mounted.test_faults import replugged_drive, trees_identical
    work = str(tmp_path)
    with drives.standin_vault(work, ("ext4", 192), ("exfat", 192)) as v:
        v.mount()
        big_subtree(v.mountpoint, files=40)
        before = snapshot(v.mountpoint)
        v.umount()
        bob, _ = make_identity(work, "bob")
        bob_grant = owner(v, "share", "projects/acme", "--to", bob + ".pub").stdout.strip()
        with replugged_drive(v.images[1], v.backup) as (pull, plug_back):
            files_at_start = count_files(v.primary)
            proc = start_revoke(v, bob_grant)
            deadline = time.monotonic() + 60
            # Pulled once the copy is under way: the copy's files appear on the primary.
            while time.monotonic() < deadline and proc.poll() is None and count_files(v.primary) < files_at_start + 8:
                time.sleep(0.02)
            assert proc.poll() is None, "the revoke ended before the drive could be pulled"
            pull()
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            assert "Traceback" not in err.decode()
            plug_back()
            listed = json.loads(owner(v, "grants", "--json").stdout)["grants"]
            assert listed == []
            v.mount()      # brings the backup up to date
            try:
                assert snapshot(v.mountpoint) == before
            finally:
                v.umount()
            assert trees_identical(v)
            fsck = owner(v, "fsck", check=False)
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_export_makes_a_vault_only_the_recipient_opens(tmp_path):
    work = str(tmp_path)
    with drives.standin_vault(work, ("ext4", 96), ("exfat", 96)) as v:
        v.mount()
        populate(v.mountpoint)
        os.setxattr(f"{v.mountpoint}/projects/acme/plan.txt", "user.tag", b"kept")
        expected = snapshot(f"{v.mountpoint}/projects/acme")
        v.umount()
        bob, bob_pass = make_identity(work, "bob")
        dest = [os.path.join(work, "stick-a"), os.path.join(work, "stick-b")]
        for d in dest:
            os.mkdir(d)
        one_line(owner(v, "export", "projects/nothing", *dest, "--to", bob + ".pub", "--allow-fixed",
                       "--allow-same-device", check=False), 14)
        doc = json.loads(owner(v, "export", "projects/acme", *dest, "--to", bob + ".pub", "--allow-fixed",
                               "--allow-same-device", "--json").stdout)
        assert doc["files"] == 4 and doc["recipient"]
        # The owner's passphrase does not open it, and it has no recovery code slot.
        one_line(drives.pqcfs("fsck", dest[0], "--passfile", v.passfile, "--backup", dest[1], check=False), 6)
        assert [s["type"] for s in json.loads(drives.pqcfs("keys", "list", dest[0], "--json").stdout)["slots"]] \
            == ["identity"]
        mnt = os.path.join(work, "bob-mnt")
        os.mkdir(mnt)
        drives.pqcfs("mount", dest[0], mnt, "--identity", bob, "--passfile", bob_pass, "--backup", dest[1],
                     "--allow-fixed", "--allow-same-device")
        try:
            assert snapshot(mnt) == expected
            assert os.getxattr(f"{mnt}/plan.txt", "user.tag") == b"kept"
        finally:
            umount(mnt)
        fsck = drives.pqcfs("fsck", dest[0], "--identity", bob, "--passfile", bob_pass, "--backup", dest[1],
                            check=False)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        # Nothing of the rest went along: the new vault's tree holds the subtree only.
        dirs = sum(len(d) for _, d, _ in os.walk(os.path.join(dest[0], "tree")))
        assert dirs == 2    # sub/ and h.links/ (the hard-linked plan.txt)


def test_several_grants_are_directories_of_one_mount(tmp_path):
    work = str(tmp_path)
    with drives.standin_vault(work, ("ext4", 64), ("ext4", 64)) as v:
        v.mount()
        populate(v.mountpoint)
        v.umount()
        bob, bob_pass = make_identity(work, "bob")
        owner(v, "share", "projects/acme", "--to", bob + ".pub", "--label", "acme")
        other = owner(v, "share", "projects/other", "--to", bob + ".pub", "--label", "from alice").stdout.strip()
        mnt = os.path.join(work, "bob-mnt")
        os.mkdir(mnt)
        grantee_mount(v, mnt, bob, bob_pass)
        try:
            assert sorted(os.listdir(mnt)) == ["acme", "from alice"]
            assert os.listdir(f"{mnt}/from alice") == ["secret.txt"]
            assert stat.S_IMODE(os.stat(mnt).st_mode) == 0o555 and os.stat(mnt).st_nlink == 4
            # The root holds the grants and nothing else; nothing moves between grants.
            for attempt, code in ((lambda: os.mkdir(f"{mnt}/new"), errno.EPERM),
                                  (lambda: open(f"{mnt}/file", "w"), errno.EPERM),
                                  (lambda: os.rename(f"{mnt}/acme", f"{mnt}/renamed"), errno.EPERM),
                                  (lambda: os.rmdir(f"{mnt}/acme"), errno.EPERM),
                                  (lambda: os.rename(f"{mnt}/acme/plan.txt", f"{mnt}/from alice/x"), errno.EXDEV),
                                  (lambda: os.link(f"{mnt}/acme/plan.txt", f"{mnt}/from alice/x"), errno.EXDEV)):
                with pytest.raises(OSError) as e:
                    attempt()
                assert e.value.errno == code, (e.value, code)
            assert not os.path.exists(f"{mnt}/nothing")
            with open(f"{mnt}/from alice/reply.txt", "w") as f:
                f.write("thanks")
        finally:
            umount(mnt)
        # --grant mounts one of them.
        grantee_mount(v, mnt, bob, bob_pass, "--grant", other[:8])
        try:
            assert os.listdir(mnt) == ["from alice"]
        finally:
            umount(mnt)
        v.mount()
        try:
            with open(f"{v.mountpoint}/projects/other/reply.txt") as f:
                assert f.read() == "thanks"
        finally:
            v.umount()


def test_revoke_on_a_drive_too_full_for_the_copy_keeps_everything(tmp_path):
    def fill(root):
        big_subtree(root, files=40, size=1 << 20)     # 40 MiB under acme: no room for a second copy
    with populated_vault(tmp_path, ("ext4", "ext4"), 64, fill) as v:
        bob, bob_pass = make_identity(str(tmp_path), "bob")
        grant = owner(v, "share", "projects/acme", "--to", bob + ".pub").stdout.strip()
        proc = owner(v, "revoke", grant, "--allow-fixed", check=False)
        one_line(proc, 9)
        assert "still in force" in proc.stderr
        # The grant stands, the partial copy is gone, the owner's data is whole, and the
        # next mount (which tries to finish the revoke) still mounts.
        assert [g["id"] for g in json.loads(owner(v, "grants", "--json").stdout)["grants"]] == [grant]
        owner_sees(v, v.mount_tree)
        mnt = os.path.join(str(tmp_path), "bob-mnt")
        os.mkdir(mnt)
        grantee_mount(v, mnt, bob, bob_pass)
        try:
            assert "f000" in os.listdir(f"{mnt}/acme/data")
        finally:
            umount(mnt)
