"""`pqcfs mount` and `pqcfs umount` as a user meets them: clear errors, exit codes, signals."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from pqcfs.session import session as session_mod
from tests.mounted import drives

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]


def mount(v, mountpoint, *extra, passfile=None):
    return drives.pqcfs("mount", v.primary, mountpoint, "--passfile", passfile or v.passfile,
                        "--allow-fixed", "--allow-same-device", *extra, check=False)


def one_line_error(proc, code):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("pqcfs: ")


def test_mount_errors_are_clear(plain_vault, tmp_path):
    vault = plain_vault
    one_line_error(mount(vault, str(tmp_path / "nowhere")), 8)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    one_line_error(mount(vault, str(busy)), 8)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    one_line_error(mount(vault, vault.mountpoint, passfile=str(wrong)), 6)
    assert mount(vault, vault.mountpoint).returncode == 0
    second = tmp_path / "second"
    second.mkdir()
    one_line_error(mount(vault, str(second)), 8)          # the vault is already mounted
    one_line_error(mount(vault, vault.mountpoint), 8)     # the mountpoint is busy
    vault.umount()
    one_line_error(drives.pqcfs("umount", vault.mountpoint, check=False), 8)


def test_sigterm_unmounts_cleanly_and_read_only_mounts_refuse_writes(plain_vault):
    vault = plain_vault
    assert mount(vault, vault.mountpoint).returncode == 0
    with open(os.path.join(vault.mountpoint, "kept"), "wb") as f:
        f.write(b"written before the signal")
    with open(session_mod.runtime_file(vault.mountpoint)) as f:
        pid = json.load(f)["pid"]
    # No handle is leaked by a busy session: the daemon's descriptors stay few.
    assert len(os.listdir(f"/proc/{pid}/fd")) < 40
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not drives.is_mounted(vault.mountpoint):
            break
        time.sleep(0.1)
    assert not drives.is_mounted(vault.mountpoint)
    status = json.loads(drives.pqcfs("status", vault.primary, "--json").stdout)
    assert all(r["clean"] for r in status["replicas"])   # unmounted cleanly: no recovery needed
    assert mount(vault, vault.mountpoint, "--ro").returncode == 0
    with open(os.path.join(vault.mountpoint, "kept"), "rb") as f:
        assert f.read() == b"written before the signal"
    with pytest.raises(OSError):
        with open(os.path.join(vault.mountpoint, "new"), "wb") as f:
            f.write(b"x")


def kill_daemon(mountpoint: str) -> None:
    with open(session_mod.runtime_file(mountpoint)) as f:
        pid = json.load(f)["pid"]
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.05)


def test_a_mount_only_root_enters_does_without_default_permissions(plain_vault):
    """Root's own mount (no allow_other) lets in root's processes alone, which pass the
    kernel's permission checks anyway: it goes without them (no attribute request after
    every create and unlink), as gocryptfs does. What still holds there: no other user
    enters, and a file without an x bit does not run. With allow_other the kernel checks
    modes and owners for everyone."""
    import pwd
    from mounttool import mountinfo
    nobody = pwd.getpwnam("nobody")

    def options():
        mount = [m for m in mountinfo.read() if m.mountpoint == plain_vault.mountpoint][-1]
        return set(mount.super_options.split(","))

    def as_nobody(command):
        # Through a descriptor of the mountpoint: the test's own directories are root's alone.
        fd = os.open(plain_vault.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return subprocess.run(["sh", "-c", command.replace("MNT", f"/proc/self/fd/{fd}")], pass_fds=(fd,),
                                  user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], capture_output=True,
                                  timeout=60)
        finally:
            os.close(fd)
    plain_vault.mount()
    try:
        assert "default_permissions" not in options()
        script = os.path.join(plain_vault.mountpoint, "script")
        with open(script, "w") as f:
            f.write("#!/bin/sh\necho ran\n")
        os.chmod(script, 0o644)
        with pytest.raises(PermissionError):
            subprocess.run([script], check=True)
        os.chmod(script, 0o755)
        assert subprocess.run([script], capture_output=True, text=True).stdout == "ran\n"
        assert as_nobody("ls MNT/").returncode != 0
    finally:
        plain_vault.umount()
    plain_vault.mount("-o", "allow_other")
    try:
        assert "default_permissions" in options()
        os.chmod(plain_vault.mountpoint, 0o755)
        assert as_nobody("ls MNT/").stdout == b"script\n"
        assert as_nobody("touch MNT/by-nobody").returncode != 0
        assert os.listdir(plain_vault.mountpoint) == ["script"]
    finally:
        plain_vault.umount()


def test_a_dead_mount_is_named_and_cleaned_up(plain_vault):
    vault = plain_vault
    assert mount(vault, vault.mountpoint).returncode == 0
    kill_daemon(vault.mountpoint)
    status = drives.pqcfs("status", "--json", check=False)
    mine = [m for m in json.loads(status.stdout)["mounts"] if m["mountpoint"] == vault.mountpoint]
    assert status.returncode == 12 and mine and mine[0]["health"] == "dead"
    one = drives.pqcfs("status", vault.mountpoint, check=False)
    assert one.returncode == 12 and "DEAD" in one.stdout and "pqcfs umount" in one.stdout
    # Mounting over the dead mount detaches it, says so, and repairs the vault.
    again = mount(vault, vault.mountpoint)
    assert again.returncode == 0 and "dead mount" in again.stderr, again.stderr
    healthy = drives.pqcfs("status", vault.mountpoint, check=False)
    assert healthy.returncode == 0 and "HEALTHY" in healthy.stdout
    by_vault = drives.pqcfs("status", vault.primary, check=False)
    assert f"mounted at {vault.mountpoint}" in by_vault.stdout and "in use (mounted)" in by_vault.stdout
    # umount of a dead mount detaches it too, instead of saying "not mounted".
    kill_daemon(vault.mountpoint)
    gone = drives.pqcfs("umount", vault.mountpoint, check=False)
    assert gone.returncode == 0 and "had died" in gone.stderr and not drives.is_mounted(vault.mountpoint)
    # Other vaults may be mounted on this machine: only this one's line counts.
    after = json.loads(drives.pqcfs("status", "--json", check=False).stdout)["mounts"]
    assert [m for m in after if m["mountpoint"] == vault.mountpoint] == []


def test_a_live_mount_whose_runtime_file_is_elsewhere_is_not_called_dead(plain_vault, tmp_path):
    """Its runtime file in another runtime directory (another login session, another
    test run): status goes by what the kernel says, and umount never detaches it as dead."""
    vault = plain_vault
    assert mount(vault, vault.mountpoint).returncode == 0
    other = dict(os.environ, PQCFS_RUNTIME_DIR=str(tmp_path / "another-session"))
    os.makedirs(other["PQCFS_RUNTIME_DIR"])
    try:
        seen = subprocess.run([sys.executable, "-m", "pqcfs", "status", "--json"], capture_output=True, text=True,
                              env=other, stdin=subprocess.DEVNULL)
        mine = [m for m in json.loads(seen.stdout)["mounts"] if m["mountpoint"] == vault.mountpoint]
        assert mine and mine[0]["health"] != "dead", seen.stdout
        with open(os.path.join(vault.mountpoint, "still-here"), "w") as f:
            f.write("alive")
        # umount from that other session finds the daemon by its process and waits for it.
        done = subprocess.run([sys.executable, "-m", "pqcfs", "umount", vault.mountpoint], capture_output=True,
                              text=True, env=other, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        assert not drives.is_mounted(vault.mountpoint)
        replicas = json.loads(drives.pqcfs("status", vault.primary, "--json", check=False).stdout)["replicas"]
        assert all(r["clean"] for r in replicas), replicas
    finally:
        vault.umount()
    assert not drives.is_mounted(vault.mountpoint)


def test_df_shows_the_fullest_replica():
    with drives.workdir() as w, drives.standin_vault(w, backup=("ext4", 64)) as vault:
        vault.mount()
        mounted, backup = os.statvfs(vault.mountpoint), os.statvfs(vault.backup)
        assert mounted.f_bavail * mounted.f_frsize == backup.f_bavail * backup.f_frsize


def test_a_busy_umount_names_who_holds_it_and_ctrl_c_of_a_foreground_mount_exits_130(plain_vault):
    vault = plain_vault
    proc = subprocess.Popen([sys.executable, "-m", "pqcfs", "mount", vault.primary, vault.mountpoint, "-f",
                             "--passfile", vault.passfile, "--allow-fixed", "--allow-same-device"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(300):
            if drives.is_mounted(vault.mountpoint) and os.path.exists(session_mod.runtime_file(vault.mountpoint)):
                break
            time.sleep(0.1)
        with open(os.path.join(vault.mountpoint, "f"), "w") as f:
            f.write("x")
        holder = subprocess.Popen(["sleep", "60"], cwd=vault.mountpoint)
        try:
            busy = drives.pqcfs("umount", vault.mountpoint, check=False)
            one_line_error(busy, 8)
            assert f"sleep (pid {holder.pid})" in busy.stderr and "--lazy" in busy.stderr, busy.stderr
        finally:
            holder.kill()
            holder.wait()
        status = drives.pqcfs("status", vault.mountpoint, check=False).stdout
        assert "daemon log" not in status      # in the foreground the log is standard error
        proc.send_signal(signal.SIGINT)          # Ctrl-C in the terminal that runs it
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert not drives.is_mounted(vault.mountpoint)
    replicas = json.loads(drives.pqcfs("status", vault.primary, "--json").stdout)["replicas"]
    assert all(r["clean"] for r in replicas)
    # What ended mounts left in the runtime directory is forgotten at the next mount: the
    # runtime file and socket of a daemon that is gone, a log older than two weeks.
    folder = os.path.dirname(session_mod.runtime_file(vault.mountpoint))
    stale = {f"mount-{'0' * 16}.json": json.dumps({"pid": 999999999, "mountpoint": "/nowhere"}),
             f"mount-{'0' * 16}.sock": "", f"mount-{'1' * 16}.log": "old", f"mount-{'2' * 16}.log": "recent"}
    for name, text in stale.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    weeks_ago = time.time() - 15 * 86400
    os.utime(os.path.join(folder, f"mount-{'1' * 16}.log"), (weeks_ago, weeks_ago))
    # The background daemon's log: where status says, in the runtime directory.
    assert mount(vault, vault.mountpoint).returncode == 0
    left = set(os.listdir(folder))
    assert not left & set(stale) - {f"mount-{'2' * 16}.log"} and f"mount-{'2' * 16}.log" in left
    shown = json.loads(drives.pqcfs("status", vault.mountpoint, "--json").stdout)["mounts"][0]["log"]
    assert shown == session_mod.runtime_file(vault.mountpoint)[:-5] + ".log" and os.path.exists(shown)
    assert stat.S_IMODE(os.stat(shown).st_mode) == 0o600
    vault.umount()
    assert not os.path.exists(shown)      # a session with nothing to tell leaves no log
