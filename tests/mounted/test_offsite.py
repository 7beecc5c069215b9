"""Offsite replicas against real rclone servers (sftp and webdav on 127.0.0.1, rclone's local
backend): a pushed vault comes back whole on new drives, a push survives its server and
its daemon being killed, and the remote is a consistent vault at every moment."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.mounted import drives
from tests.mounted.drives import pqcfs
from tests.rclone_servers import served

pytestmark = [pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse"),
              pytest.mark.skipif(shutil.which("rclone") is None, reason="needs rclone (scripts/dev.sh installs it)")]


def snapshot(top: str) -> dict:
    """Everything a user sees of a tree: kinds, modes, sizes, times, links, xattrs, bytes."""
    out = {}
    for here, dirs, files in os.walk(top):
        for name in sorted(dirs + files):
            path = os.path.join(here, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, top)
            item = {"mode": st.st_mode, "mtime": st.st_mtime_ns, "nlink": st.st_nlink, "uid": st.st_uid}
            if os.path.islink(path):
                item["target"] = os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    item["sha"] = hashlib.sha256(f.read()).hexdigest()
                item["size"] = st.st_size
            if not os.path.islink(path):
                item["xattrs"] = {k: os.getxattr(path, k) for k in sorted(os.listxattr(path)) if k.startswith("user.")}
            out[rel] = item
    return out


def populate(mnt: str, big_mb: int = 3) -> None:
    os.makedirs(os.path.join(mnt, "docs/deep/er"))
    with open(os.path.join(mnt, "docs/letter.txt"), "w") as f:
        f.write("dear remote\n" * 100)
    with open(os.path.join(mnt, "docs/deep/er/big.bin"), "wb") as f:
        f.write(os.urandom(big_mb << 20))
    os.chmod(os.path.join(mnt, "docs/letter.txt"), 0o640)
    os.symlink("../letter.txt", os.path.join(mnt, "docs/deep/link"))
    os.link(os.path.join(mnt, "docs/letter.txt"), os.path.join(mnt, "docs/hard"))
    os.setxattr(os.path.join(mnt, "docs/letter.txt"), "user.note", b"kept offsite")
    os.utime(os.path.join(mnt, "docs/deep/er/big.bin"), ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.mkfifo(os.path.join(mnt, "docs/pipe"))


def big_objects(root: str) -> list[str]:
    """Objects of the 4 MiB files, whole, on the server."""
    return [os.path.join(here, name) for here, _, files in os.walk(root) for name in files
            if os.path.getsize(os.path.join(here, name)) >= (4 << 20) + (16 << 10)]


def recover_into(vault, path: str, config: str, *extra, check=True):
    new_a, new_b = os.path.join(vault.workdir, "new-a"), os.path.join(vault.workdir, "new-b")
    for d in (new_a, new_b):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    r = pqcfs("recover", path, new_a, new_b, "--rclone-config", config, "--passfile", vault.passfile,
              "--allow-fixed", "--allow-same-device", *extra, check=check, timeout=300)
    return r, new_a, new_b


def assert_recovers_to(vault, path: str, config: str, expected: dict, *extra) -> tuple:
    """recover into new directories, mount what it wrote, and find expected there."""
    r, new_a, new_b = recover_into(vault, path, config, *extra)
    recovered = other_vault(vault, new_a, new_b)
    recovered.mount()
    try:
        assert snapshot(recovered.mountpoint) == expected
    finally:
        recovered.umount()
    return r, new_a, new_b


def other_vault(vault, primary: str, backup: str):
    other = drives.Vault(vault.workdir, primary, backup)
    other.passfile = vault.passfile
    other.mountpoint = os.path.join(vault.workdir, "mnt-recovered")
    os.makedirs(other.mountpoint, exist_ok=True)
    other.mount_flags = ["--allow-same-device"]
    return other


@pytest.mark.parametrize("kind", ["sftp", "webdav"])
def test_push_then_recover_gives_the_same_tree(plain_vault, kind, monkeypatch):
    monkeypatch.setenv("PQCFS_PUSH_INTERVAL", "0")      # only the pushes this test asks for
    with served(kind, plain_vault.workdir) as server:
        plain_vault.mount()
        populate(plain_vault.mountpoint)
        pqcfs("remote", "add", plain_vault.primary, server.path("vaults/v1"), "--rclone-config", server.config)
        pushed = json.loads(pqcfs("push", plain_vault.primary, "--json").stdout)["pushed"][0]
        assert pushed["epoch"] == 1 and pushed["objects_sent"] > 5 and not pushed["unchanged"]
        before = snapshot(plain_vault.mountpoint)
        again = json.loads(pqcfs("push", plain_vault.primary, "--json").stdout)["pushed"][0]
        # Nothing changed in between: nothing is sent (the audit log's push record aside).
        assert again["bytes_sent"] < 64 << 10, again
        plain_vault.umount()
        # Only ciphertext left the machine: no plaintext name or content is on the server.
        for here, _, files in os.walk(server.root):
            for name in files:
                assert "letter" not in name and "docs" not in name
                with open(os.path.join(here, name), "rb") as f:
                    assert b"dear remote" not in f.read()
        r, new_a, new_b = assert_recovers_to(plain_vault, server.path("vaults/v1"), server.config, before, "--json")
        assert json.loads(r.stdout)["epoch"] == 2
        assert pqcfs("fsck", new_a, "--passfile", plain_vault.passfile, "--backup", new_b, "--allow-same-device",
                     check=False).returncode == 0
        # The recovered vault goes on pushing from the epoch it came from.
        status = json.loads(pqcfs("status", new_a, "--json", check=False).stdout)
        assert [r["epoch"] for r in status["remotes"]] == [2]


def test_background_push_and_umount_wait_remote(plain_vault, tmp_path, monkeypatch):
    remote_dir = str(tmp_path / "offsite")
    pqcfs("remote", "add", plain_vault.primary, remote_dir, "--name", "attic")
    monkeypatch.setenv("PQCFS_PUSH_INTERVAL", "1")
    plain_vault.mount()
    with open(os.path.join(plain_vault.mountpoint, "note"), "w") as f:
        f.write("pushed without asking")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = json.loads(pqcfs("status", plain_vault.primary, "--json", check=False).stdout)["remotes"][0]
        if status["epoch"] and status.get("changes_behind") == 0:
            break
        time.sleep(0.5)
    assert status["epoch"] and status["changes_behind"] == 0, status
    with open(os.path.join(plain_vault.mountpoint, "late"), "w") as f:
        f.write("written just before unmount")
    monkeypatch.setenv("PQCFS_PUSH_INTERVAL", "0")
    pqcfs("umount", "--wait-remote", plain_vault.mountpoint)
    status = json.loads(pqcfs("status", plain_vault.primary, "--json", check=False).stdout)["remotes"][0]
    assert status["changes_behind"] == 0, status


def test_server_killed_mid_push_resumes_and_the_remote_stays_consistent(plain_vault, monkeypatch):
    # A dead server is given up on after 5 s of silence (not rclone's 30 s), once.
    monkeypatch.setenv("RCLONE_TIMEOUT", "5s")
    monkeypatch.setenv("RCLONE_RETRIES", "1")
    monkeypatch.setenv("RCLONE_LOW_LEVEL_RETRIES", "1")
    monkeypatch.setenv("PQCFS_PUSH_INTERVAL", "0")      # only the pushes this test asks for
    with served("sftp", plain_vault.workdir) as server:
        plain_vault.mount()
        populate(plain_vault.mountpoint, big_mb=1)
        remote = server.path("v")
        pqcfs("remote", "add", plain_vault.primary, remote, "--rclone-config", server.config)
        pqcfs("push", plain_vault.primary)
        first = snapshot(plain_vault.mountpoint)
        for n in range(6):
            with open(os.path.join(plain_vault.mountpoint, f"more-{n}.bin"), "wb") as f:
                f.write(os.urandom(4 << 20))
        # A slow push (--bwlimit), and the server dies under it once two of the six new
        # files are there whole.
        push = subprocess.Popen([*drives.PQCFS, "push", plain_vault.primary, "--bwlimit", "6M"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(big_objects(server.root)) < 2:
            time.sleep(0.05)
        whole = len(big_objects(server.root))
        server.stop()
        assert 2 <= whole < 6
        out, err = push.communicate(timeout=180)
        assert push.returncode == 16, (push.returncode, err)      # REMOTE: rclone's error, named
        assert "pqcfs:" in err and "Traceback" not in err
        server.start()
        plain_vault.umount()
        # Recovering now gives the last complete epoch: the state of the first push.
        assert_recovers_to(plain_vault, remote, server.config, first)
        # The push goes on where it stopped: what reached the server is not sent again.
        done = json.loads(pqcfs("push", plain_vault.primary, "--json", "--passfile", plain_vault.passfile,
                                "--backup", plain_vault.backup, "--allow-same-device").stdout)["pushed"][0]
        assert done["epoch"] == 2 and done["bytes_sent"] <= (6 - whole) * (4 << 20) * 1.01 + (1 << 20), done


def test_daemon_killed_mid_push_resumes_at_the_next_mount(plain_vault, tmp_path, monkeypatch):
    monkeypatch.setenv("PQCFS_PUSH_INTERVAL", "0")      # only the push this test asks for, until the remount
    remote_dir = str(tmp_path / "offsite")
    pqcfs("remote", "add", plain_vault.primary, remote_dir, "--name", "attic")
    plain_vault.mount()
    for n in range(4):
        with open(os.path.join(plain_vault.mountpoint, f"f{n}.bin"), "wb") as f:
            f.write(os.urandom(4 << 20))
    expected = snapshot(plain_vault.mountpoint)
    pid = json.loads(pqcfs("status", plain_vault.mountpoint, "--json").stdout)["mounts"][0]["pid"]
    push = subprocess.Popen([*drives.PQCFS, "push", plain_vault.primary, "--bwlimit", "2M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    os.kill(pid, signal.SIGKILL)
    push.communicate(timeout=60)
    assert push.returncode != 0
    plain_vault.umount()         # the dead mount is detached
    assert not os.path.exists(os.path.join(remote_dir, "epochs")) or not os.listdir(os.path.join(remote_dir, "epochs"))
    # The next mount pushes at its start what the killed session left.
    monkeypatch.setenv("PQCFS_PUSH_INTERVAL", "1")
    plain_vault.mount()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = json.loads(pqcfs("status", plain_vault.primary, "--json", check=False).stdout)["remotes"][0]
        if status["epoch"]:
            break
        time.sleep(0.5)
    plain_vault.umount()
    assert_recovers_to(plain_vault, remote_dir, "/dev/null", expected)


def test_a_grantees_view_is_the_same_after_push_and_recover(plain_vault, monkeypatch):
    from tests.mounted.test_sharing import make_identity
    monkeypatch.setenv("PQCFS_PUSH_INTERVAL", "0")
    work, v = plain_vault.workdir, plain_vault
    v.mount()
    os.makedirs(os.path.join(v.mountpoint, "shared/deeper"))
    os.makedirs(os.path.join(v.mountpoint, "private"))
    with open(os.path.join(v.mountpoint, "shared/deeper/for-bob.txt"), "w") as f:
        f.write("bob may read this")
    with open(os.path.join(v.mountpoint, "private/diary.txt"), "w") as f:
        f.write("bob may not")
    v.umount()
    bob, bob_pass = make_identity(work, "bob")
    owner = ["--passfile", v.passfile, "--backup", v.backup, "--allow-same-device"]
    pqcfs("share", v.primary, "shared", "--to", bob + ".pub", *owner)
    bob_mnt = os.path.join(work, "bob-mnt")
    os.makedirs(bob_mnt)

    def bobs_view(primary, backup):
        pqcfs("mount", primary, bob_mnt, "--identity", bob, "--passfile", bob_pass, "--backup", backup,
              "--allow-same-device", "--ro")
        try:
            return snapshot(bob_mnt)
        finally:
            pqcfs("umount", bob_mnt)
    before = bobs_view(v.primary, v.backup)
    assert any(k.endswith("for-bob.txt") for k in before) and not any("diary" in k for k in before)
    remote_dir = os.path.join(work, "offsite")
    pqcfs("remote", "add", v.primary, remote_dir)
    pqcfs("push", v.primary, *owner)
    r, new_a, new_b = recover_into(v, remote_dir, "/dev/null")
    assert bobs_view(new_a, new_b) == before


def test_background_pushes_under_load_leave_every_epoch_consistent(plain_vault, tmp_path, monkeypatch):
    """Random operations from two processes while the daemon pushes every half second (each
    push writes out what only memory holds, mid-session): the vault stays what the
    processes' models say, fsck finds it clean, and the last epoch recovers to it."""
    import sys
    from tests.mounted.exerciser import snapshot as model_snapshot
    script = os.path.join(os.path.dirname(__file__), "exerciser.py")
    remote_dir = str(tmp_path / "offsite")
    pqcfs("remote", "add", plain_vault.primary, remote_dir)
    monkeypatch.setenv("PQCFS_PUSH_INTERVAL", "0.5")
    plain_vault.mount()
    procs, outs = [], []
    for n in range(2):
        outs.append(os.path.join(plain_vault.workdir, f"model-{n}.json"))
        procs.append(subprocess.Popen([sys.executable, script, os.path.join(plain_vault.mountpoint, f"w{n}"),
                                       str(40 + n), os.environ.get("PQCFS_OFFSITE_OPS", "600"), outs[-1]],
                                      stderr=subprocess.PIPE, text=True))
    # Meanwhile, copies of the remote taken at moments the pushes do not choose (the epoch
    # records first: an epoch's objects stay until two later epochs commit).
    moments = []
    while any(p.poll() is None for p in procs) and len(moments) < 3:
        time.sleep(1.3)
        if os.path.isdir(os.path.join(remote_dir, "epochs")):
            copy = os.path.join(plain_vault.workdir, f"moment-{len(moments)}")
            shutil.copytree(os.path.join(remote_dir, "epochs"), os.path.join(copy, "epochs"))
            subprocess.run(["cp", "-al", os.path.join(remote_dir, "objects"), os.path.join(copy, "objects")],
                           check=True)
            shutil.copy(os.path.join(remote_dir, "pqcfs.vault"), copy)
            moments.append(copy)
    errors = [p.communicate(timeout=900)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(errors)
    pushes_during = json.loads(pqcfs("status", plain_vault.primary, "--json", check=False).stdout)["remotes"][0]
    assert pushes_during["epoch"] and pushes_during["epoch"] >= 2, pushes_during
    pqcfs("umount", "--wait-remote", plain_vault.mountpoint)
    assert pqcfs("fsck", plain_vault.primary, "--passfile", plain_vault.passfile, "--backup", plain_vault.backup,
                 "--allow-same-device", check=False).returncode == 0
    # The remote at any of those moments was a whole vault: an earlier epoch, complete.
    assert moments
    for copy in moments:
        r, new_a, new_b = recover_into(plain_vault, copy, "/dev/null", "--accept-older")
        assert pqcfs("fsck", new_a, "--passfile", plain_vault.passfile, "--backup", new_b, "--allow-same-device",
                     check=False).returncode == 0, copy
    r, new_a, new_b = recover_into(plain_vault, remote_dir, "/dev/null")
    recovered = other_vault(plain_vault, new_a, new_b)
    monkeypatch.setenv("PQCFS_PUSH_INTERVAL", "0")
    recovered.mount()
    try:
        for n, out in enumerate(outs):
            with open(out) as f:
                want = {k: tuple(v) for k, v in json.load(f)["expected"].items()}
            assert model_snapshot(os.path.join(recovered.mountpoint, f"w{n}")) == want, f"worker {n}"
    finally:
        recovered.umount()
