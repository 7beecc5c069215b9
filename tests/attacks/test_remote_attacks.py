"""An offsite remote is untrusted: whoever runs the server can change, delete, swap or roll
back what it holds. Each of those is found and named by push, fsck --remote and recover,
and none of them makes pqcfs write a wrong vault. The remote's address and credentials
never reach a replica. (rclone's local backend: the same code path as any remote.)"""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from pqcfs.cli import exitcodes
from tests.api.test_cli import pqcfs

pytestmark = pytest.mark.skipif(shutil.which("rclone") is None, reason="needs rclone (scripts/dev.sh installs it)")


@pytest.fixture
def pushed(tmp_path):
    """A vault with a few files written through an offline session, pushed once to a
    local-backend remote."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    assert pqcfs("init", str(a), str(b), "--passfile", str(pw), "--allow-fixed", "--allow-same-device").returncode == 0
    _write_files(str(a), str(pw), {"one.txt": b"first" * 100, "two.bin": os.urandom(70000)})
    remote = str(tmp_path / "remote")
    r = pqcfs("remote", "add", str(a), remote, "--name", "attic")
    assert r.returncode == 0, r.stderr
    r = pqcfs("push", str(a), "--passfile", str(pw), "--json")
    assert r.returncode == 0, r.stderr
    return a, b, pw, remote, tmp_path


def _write_files(primary: str, pw: str, files: dict) -> None:
    """Files written as a mount would, without FUSE (a session of the API on both replicas)."""
    from pqcfs import vault as vault_mod
    from pqcfs.fs.common import Caller
    from pqcfs.session.session import Session
    backup = os.path.join(os.path.dirname(primary), "b")
    with open(pw, "rb") as f:
        passphrase = f.read().strip()
    vault = vault_mod.unlock([primary, backup], vault_mod.Credentials(passphrase=passphrase))
    session = Session(vault, os.path.join(os.path.dirname(primary), "mnt"))
    session.prepare()
    vfs = session.build()
    me = Caller(uid=0, gid=0)
    for name, data in files.items():
        node = vfs.create_file(vfs.inodes.root, name.encode(), stat.S_IFREG | 0o644, me)
        vfs.open(node, True).write(0, data)
        vfs.release(node)
    session._finish()
    vault.close()


def objects(remote: str) -> list[str]:
    return sorted(os.path.join(here, n) for here, _, files in os.walk(os.path.join(remote, "objects")) for n in files)


def recover(tmp, remote, pw, *extra):
    new_a, new_b = tmp / "new-a", tmp / "new-b"
    for d in (new_a, new_b):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    return pqcfs("recover", remote, str(new_a), str(new_b), "--passfile", str(pw), "--allow-fixed",
                 "--allow-same-device", *extra), new_a


def largest(remote: str) -> str:
    return max(objects(remote), key=os.path.getsize)


def test_a_changed_byte_is_named_by_fsck_refused_by_recover_and_healed_by_push(pushed):
    a, b, pw, remote, tmp = pushed
    victim = largest(remote)
    with open(victim, "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 1]))
    r = pqcfs("fsck", str(a), "--remote", "--passfile", str(pw))
    assert r.returncode == exitcodes.CRYPTO, r.stdout + r.stderr
    assert "CHANGED tree/" in r.stdout and os.path.basename(victim)[:16] in r.stdout
    r, new_a = recover(tmp, remote, pw)
    assert r.returncode == exitcodes.CRYPTO and "changed on the remote" in r.stderr, r.stderr
    assert not (new_a / "pqcfs.vault").exists()        # nothing half-written passes for a vault
    # A push checks a sample of what the remote holds (here: every object), finds it and sends it again.
    r = pqcfs("push", str(a), "--passfile", str(pw))
    assert r.returncode == 0 and "missing or changed" in r.stderr, r.stderr
    assert pqcfs("fsck", str(a), "--remote", "--passfile", str(pw)).returncode == 0


def test_a_deleted_object_is_named_and_pushed_again(pushed):
    a, b, pw, remote, tmp = pushed
    os.unlink(largest(remote))
    r = pqcfs("fsck", str(a), "--remote", "--passfile", str(pw), "--json")
    report = json.loads(r.stdout)["remotes"][0]
    assert r.returncode == exitcodes.CRYPTO and len(report["missing"]) == 1 and report["missing"][0].startswith("tree/")
    r, new_a = recover(tmp, remote, pw)
    assert r.returncode == exitcodes.CRYPTO and "1 object(s) missing" in r.stderr
    assert os.listdir(new_a) == [] and os.listdir(tmp / "new-b") == []     # as empty as they were
    assert pqcfs("push", str(a), "--passfile", str(pw)).returncode == 0
    # The same command again, into the same directories, now that the push mended the remote.
    r = pqcfs("recover", remote, str(new_a), str(tmp / "new-b"), "--passfile", str(pw), "--allow-fixed",
              "--allow-same-device")
    assert r.returncode == 0, r.stderr


def test_a_remote_rolled_back_to_an_older_epoch_is_refused(pushed):
    a, b, pw, remote, tmp = pushed
    old_copy = str(tmp / "remote-epoch-1")
    shutil.copytree(remote, old_copy)
    _write_files(str(a), str(pw), {"three.txt": b"after the first push"})
    assert pqcfs("push", str(a), "--passfile", str(pw)).returncode == 0
    shutil.rmtree(remote)
    shutil.copytree(old_copy, remote)      # the server restored from last week's backup
    r = pqcfs("push", str(a), "--passfile", str(pw))
    assert r.returncode == exitcodes.CRYPTO and "went back" in r.stderr and "epoch 1" in r.stderr, r.stderr
    r, _ = recover(tmp, remote, pw)
    assert r.returncode == exitcodes.CRYPTO and "rolled back" in r.stderr, r.stderr
    r, new_a = recover(tmp, remote, pw, "--accept-older", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["epoch"] == 1
    assert "older than epoch 2" in r.stderr


def test_an_epoch_record_moved_to_a_newer_number_fails_authentication(pushed):
    a, b, pw, remote, tmp = pushed
    epochs = os.path.join(remote, "epochs")
    shutil.copy(os.path.join(epochs, "00000000000000000001"), os.path.join(epochs, "00000000000000000009"))
    r = pqcfs("push", str(a), "--passfile", str(pw))
    assert r.returncode == exitcodes.CRYPTO and "epoch record 9 failed authentication" in r.stderr, r.stderr
    r, _ = recover(tmp, remote, pw)
    assert r.returncode == exitcodes.CRYPTO and "epoch record 9" in r.stderr
    r, _ = recover(tmp, remote, pw, "--accept-older")
    assert r.returncode == 0 and "epoch record 9" in r.stderr


def test_a_replaced_epoch_record_is_not_the_one_this_machine_committed(pushed):
    a, b, pw, remote, tmp = pushed
    epochs = os.path.join(remote, "epochs")
    assert pqcfs("push", str(a), "--passfile", str(pw)).returncode == 0     # epoch 2 (epoch 1 is kept)
    # The server swaps in junk under the newest record's name.
    with open(os.path.join(epochs, "00000000000000000002"), "wb") as f:
        f.write(os.urandom(300))
    r = pqcfs("push", str(a), "--passfile", str(pw))
    assert r.returncode == exitcodes.CRYPTO and "not the one this machine committed" in r.stderr, r.stderr


def test_an_oversized_object_is_refused_without_being_downloaded(pushed):
    a, b, pw, remote, tmp = pushed
    victim = largest(remote)
    with open(victim, "r+b") as f:
        f.truncate(200 << 20)        # sparse here; a hostile server would stream it
    r = pqcfs("fsck", str(a), "--remote", "--passfile", str(pw), "--json")
    assert r.returncode == exitcodes.CRYPTO and len(json.loads(r.stdout)["remotes"][0]["changed"]) == 1
    r, new_a = recover(tmp, remote, pw)
    assert r.returncode == exitcodes.CRYPTO
    assert sum(os.path.getsize(os.path.join(h, n)) for h, _, fs in os.walk(new_a) for n in fs) < 1 << 20


def test_another_vaults_remote_or_a_foreign_directory_is_refused(pushed, tmp_path):
    a, b, pw, remote, tmp = pushed
    c, d = tmp_path / "c", tmp_path / "d"
    c.mkdir(), d.mkdir()
    assert pqcfs("init", str(c), str(d), "--passfile", str(pw), "--allow-fixed", "--allow-same-device").returncode == 0
    r = pqcfs("remote", "add", str(c), remote)
    assert r.returncode == exitcodes.REMOTE and "another pqcfs vault" in r.stderr
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    r = pqcfs("remote", "add", str(c), str(foreign))
    assert r.returncode == exitcodes.REMOTE and "not empty" in r.stderr


def test_an_unreachable_remote_is_a_clear_error(pushed):
    a, b, pw, remote, tmp = pushed
    r = pqcfs("remote", "add", str(a), ":webdav,url='http://127.0.0.1:1/':vault", "--name", "gone",
              env_extra={"RCLONE_CONTIMEOUT": "2s", "RCLONE_LOW_LEVEL_RETRIES": "1"})
    assert r.returncode == exitcodes.REMOTE and "connection refused" in r.stderr, r.stderr


def test_the_remotes_address_and_password_never_reach_a_replica(pushed):
    a, b, pw, remote, tmp = pushed
    secret_host, secret_pass = "offsite-host-7f3a.example", "s3cr3t-pass-9c1d"
    config = tmp / "rclone.conf"
    config.write_text(f"[vaultbox]\ntype = alias\nremote = {tmp / 'aliased'}\n# {secret_host} {secret_pass}\n")
    r = pqcfs("remote", "add", str(a), "vaultbox:v", "--rclone-config", str(config))
    assert r.returncode == 0, r.stderr
    assert pqcfs("push", str(a), "--passfile", str(pw), "--remote", "vaultbox").returncode == 0
    for replica in (a, b):
        for here, _, files in os.walk(replica):
            for name in files:
                with open(os.path.join(here, name), "rb") as f:
                    data = f.read()
                for needle in (b"vaultbox:v", str(tmp).encode() + b"/aliased", b"rclone.conf", str(remote).encode()):
                    assert needle not in data, (name, needle)


def test_drives_that_do_not_continue_the_remotes_history_do_not_replace_it(pushed):
    a, b, pw, remote, tmp = pushed
    r, new_a = recover(tmp, remote, pw)
    assert r.returncode == 0, r.stderr
    new_b = tmp / "new-b"
    r = pqcfs("push", str(new_a), "--passfile", str(pw), "--backup", str(new_b), "--allow-same-device", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["pushed"][0]["epoch"] == 2, r.stderr
    # The lost drives turn up again and try to push: their history is not the remote's.
    r = pqcfs("push", str(a), "--passfile", str(pw))
    assert r.returncode == exitcodes.DRIVE and "does not continue" in r.stderr, r.stderr
    assert sorted(os.listdir(os.path.join(remote, "epochs"))) == ["00000000000000000001", "00000000000000000002"]


def test_a_remotes_answers_are_read_with_a_bound(pushed, monkeypatch):
    """A listing (or a file) longer than pqcfs would ever write is cut off and refused,
    never read whole into memory."""
    from pqcfs.errors import RemoteError
    from pqcfs.remote import rclone
    a, b, pw, remote, tmp = pushed
    monkeypatch.setattr(rclone, "LISTING_CAP", 200)
    with pytest.raises(RemoteError, match="printed more than"):
        rclone.Remote(remote).list_files("objects")
    with pytest.raises(RemoteError, match="larger than 100 bytes"):
        rclone.Remote(remote).read("pqcfs.vault", 100)
