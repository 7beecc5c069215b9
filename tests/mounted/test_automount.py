"""`pqcfs automount`: the generated units pass `systemd-analyze verify`, and what the
service runs (its ExecStart and ExecStop, words as systemd splits them) mounts the vault,
says READY=1 only once the mount answers, refuses a drive that only carries the UUID, and
unmounts cleanly. There is no systemd PID 1 here: the drives' mount units are stood in
for by bind mounts at the paths they would mount."""

import contextlib
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import sysconfig
import time

import pytest

from mounttool import units
from pqcfs import install
from tests.mounted import drives, users

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]


def enable(v, root, *extra):
    drives.pqcfs("system", "install", "--root", str(root))      # the program the units run
    return json.loads(drives.pqcfs("automount", "enable", v.primary, "--at", v.mountpoint, "--root", str(root),
                                   "--json", *extra).stdout)


def read(path) -> str:
    with open(path) as f:
        return f.read()


def unit_value(text: str, key: str) -> str:
    return next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "="))


def systemd_words(command: str) -> list[str]:
    """ExecStart= split into words: double quotes group, `%%` and `$$` are literal."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(command)]


@pytest.mark.parametrize("unlock", ["ask", "passfile", "identity", "host-key"])
def test_generated_units_verify_and_name_the_right_drives(tmp_path, unlock):
    with drives.standin_vault(str(tmp_path), ("ext4", 32), ("exfat", 32)) as v:
        extra = {"ask": [], "passfile": ["--passfile", v.passfile], "host-key": [],
                 "identity": ["--identity-file", "/root/id.json"]}[unlock]
        if unlock == "host-key":
            # Without a host-key slot whose secret this machine holds, every insertion would
            # fail to unlock: refused, with the command that makes one.
            refused = drives.pqcfs("automount", "enable", v.primary, "--at", v.mountpoint, "--root",
                                   str(tmp_path / "root"), "--unlock", "host-key", check=False)
            assert refused.returncode != 0 and "keys add VAULT --host" in refused.stderr, refused.stderr
            drives.pqcfs("keys", "add", v.primary, "--host", "--passfile", v.passfile, "--backup", v.backup,
                         "--allow-fixed")
        doc = enable(v, tmp_path / "root", "--unlock", unlock, *extra, "-o", "allow_other")
        header = json.loads(drives.pqcfs("info", v.primary, "--json").stdout)
        vault_id = doc["vault_id"]
        unit_files = [f for f in doc["files"] if f.endswith((".service", ".mount"))]
        assert len(unit_files) == 3
        proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *unit_files], capture_output=True, text=True)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
        # Unit names are what systemd-escape makes of the paths.
        for f in unit_files:
            if f.endswith(".mount"):
                text = read(f)
                where = unit_value(text, "Where")
                escaped = subprocess.run(["systemd-escape", "--path", "--suffix=mount", where], capture_output=True,
                                         text=True).stdout.strip()
                assert os.path.basename(f) == escaped
        rule = next(f for f in doc["files"] if f.endswith(".rules"))
        text = read(rule)
        uuids = [r["fs_uuid"] for r in header["replicas"]]
        assert all(f'ENV{{ID_FS_UUID}}=="{u}"' in text for u in uuids)
        assert f'ENV{{SYSTEMD_WANTS}}+="pqcfs-{vault_id}.service"' in text
        status = json.loads(drives.pqcfs("automount", "status", "--root", str(tmp_path / "root"), "--json").stdout)
        assert [r["vault_id"] for r in status["vaults"]] == [vault_id]
        assert all(d["plugged_in"] for d in status["vaults"][0]["drives"])
        drives.pqcfs("automount", "disable", vault_id, "--root", str(tmp_path / "root"))
        assert not any(os.path.exists(f) for f in doc["files"])


class NotifySocket:
    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)

    def wait_for(self, field: str, timeout: float, proc) -> list[str]:
        deadline, got = time.monotonic() + timeout, []
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                got += self.sock.recv(4096).decode().split("\n")
            except socket.timeout:
                continue
            if field in got:
                return got
        return got

    def drain(self) -> list[str]:
        got = []
        while True:
            try:
                got += self.sock.recv(4096).decode().split("\n")
            except socket.timeout:
                return got

    def close(self):
        self.sock.close()


def unplug(where: str) -> None:
    """What systemd does when a drive's mount unit stops: unmount, and the directory goes."""
    drives.unmount(where)
    with contextlib.suppress(OSError):
        os.rmdir(where)


def bind_drive(location: str, fs_uuid: str) -> str:
    """What the drive's mount unit does (the drive's file system at /run/pqcfs/drives/UUID)."""
    where = f"{units.DRIVES_DIR}/{fs_uuid}"
    os.makedirs(where, exist_ok=True)
    drives.run("mount", "--bind", location, where)
    return where


def test_the_service_commands_mount_on_insert_refuse_a_copied_uuid_and_unmount_cleanly(tmp_path):
    work = str(tmp_path)
    with drives.standin_vault(work, ("ext4", 48), ("ext4", 48)) as v:
        v.mount()
        with open(os.path.join(v.mountpoint, "hello"), "w") as f:
            f.write("plugged in")
        v.umount()
        doc = enable(v, tmp_path / "root", "--unlock", "passfile", "--passfile", v.passfile, "--wait-backup", "5")
        service = read(next(f for f in doc["files"] if f.endswith(".service")))
        start, stop = systemd_words(unit_value(service, "ExecStart")), systemd_words(unit_value(service, "ExecStop"))
        header = json.loads(drives.pqcfs("info", v.primary, "--json").stdout)
        uuid = {r["role"]: r["fs_uuid"] for r in header["replicas"]}
        binds = []
        notify = NotifySocket(os.path.join(work, "notify"))
        env = dict(os.environ, NOTIFY_SOCKET=notify.path)
        try:
            # Insert: the primary's mount unit has run; the service starts and is ready
            # once the vault answers; the backup (already there) is taken in.
            binds.append(bind_drive(v.primary, uuid["primary"]))
            binds.append(bind_drive(v.backup, uuid["backup"]))
            assert start[0] == "/usr/bin/pqcfs"
            proc = subprocess.Popen([sys.executable, "-m", "pqcfs", *start[1:], "--allow-fixed"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            got = notify.wait_for("READY=1", 60, proc)
            assert "READY=1" in got, proc.stderr.read().decode() if proc.poll() is not None else got
            with open(os.path.join(v.mountpoint, "hello")) as f:
                assert f.read() == "plugged in"
            status = json.loads(drives.pqcfs("status", v.mountpoint, "--json", check=False).stdout)
            assert status["mounts"][0]["missing"] == [] and not status["mounts"][0]["failed"]
            # Stop (removal of the primary, shutdown, or `systemctl stop`): ExecStop.
            assert subprocess.run([sys.executable, "-m", "pqcfs", *stop[1:]], capture_output=True).returncode == 0
            assert proc.wait(timeout=60) == 0
            proc.stdout.close()
            proc.stderr.close()
            assert "STOPPING=1" in notify.drain()
            replicas = json.loads(drives.pqcfs("status", v.primary, "--json").stdout)["replicas"]
            assert all(r["clean"] for r in replicas)
            for where in reversed(binds):
                unplug(where)
            binds.clear()

            # A stick that only copies the primary's UUID (another vault at that path).
            other = os.path.join(work, "other")
            os.mkdir(other)
            drives.pqcfs("init", other, "--passfile", v.passfile, "--allow-fixed", "--single")
            binds.append(bind_drive(other, uuid["primary"]))
            proc = subprocess.run([sys.executable, "-m", "pqcfs", *start[1:], "--allow-fixed"], env=env,
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 7 and "refused" in proc.stderr, proc.stderr
            assert not drives.is_mounted(v.mountpoint)
        finally:
            notify.close()
            v.umount()
            for where in reversed(binds):
                unplug(where)


@contextlib.contextmanager
def udev_rules_installed(rule_file: str):
    """The rule where `udevadm test` reads rules (/run/udev/rules.d), and everything
    `udevadm test` leaves behind (its database under /run/udev, the links under
    /dev/disk it makes, which no udev daemon keeps up to date here) removed after."""
    made = [p for p in ("/run/udev", "/dev/disk") if not os.path.exists(p)]
    before = set(os.listdir("/dev/disk/by-uuid")) if os.path.isdir("/dev/disk/by-uuid") else set()
    os.makedirs("/run/udev/rules.d", exist_ok=True)
    target = os.path.join("/run/udev/rules.d", os.path.basename(rule_file))
    shutil.copy(rule_file, target)
    try:
        yield
    finally:
        os.unlink(target)
        for p in made:
            shutil.rmtree(p, ignore_errors=True)
        if os.path.isdir("/dev/disk/by-uuid"):
            for name in set(os.listdir("/dev/disk/by-uuid")) - before:
                os.unlink(os.path.join("/dev/disk/by-uuid", name))


def udev_wants(device: str) -> list[str]:
    proc = subprocess.run(["udevadm", "test", "--action=add", f"/sys/class/block/{os.path.basename(device)}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    return [w for line in out.splitlines() if line.startswith("SYSTEMD_WANTS=") for w in line.split("=", 1)[1].split()]


def test_the_udev_rule_pulls_the_service_only_for_the_vaults_drives(tmp_path):
    assert shutil.which("udevadm"), "udev's tools are missing: `bash scripts/dev.sh test` installs them"
    with drives.standin_vault(str(tmp_path), ("ext4", 32), ("exfat", 32)) as v, \
            drives.loop_drive(str(tmp_path), "stranger", "ext4", 32) as (_, stranger_image):
        doc = enable(v, tmp_path / "root")
        vault_id = doc["vault_id"]
        rule = next(f for f in doc["files"] if f.endswith(".rules"))
        backup_unit = next(os.path.basename(f) for f in doc["files"]
                           if f.endswith(".mount") and "backup drive" in read(f))
        loops = [drives.run("losetup", "-j", image).stdout.split(":")[0] for image in (*v.images, stranger_image)]
        with udev_rules_installed(rule):
            assert f"pqcfs-{vault_id}.service" in udev_wants(loops[0])            # the primary
            assert backup_unit in udev_wants(loops[1])                            # the backup: its mount
            assert not [w for w in udev_wants(loops[2]) if "pqcfs" in w]          # any other drive


class JournalSocket:
    """Where journald listens, stood in for: each entry with the credentials it came with."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.entries: list[tuple[int, dict]] = []

    def receive(self) -> list[tuple[int, dict]]:
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(12))
            except socket.timeout:
                return self.entries
            uid = next(struct.unpack("iII", d)[1] for level, kind, d in ancdata
                       if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.entries.append((uid, fields))

    def close(self):
        self.sock.close()


def unit_mount(loop: str, fs: str, fs_uuid: str) -> str:
    """What a drive's generated .mount unit does when the drive appears."""
    where = f"{units.DRIVES_DIR}/{fs_uuid}"
    os.makedirs(where, exist_ok=True)
    if fs == "exfat":
        drives.run("mount.exfat-fuse", loop, where)
    else:
        drives.run("mount", "-o", "nosuid,nodev,noexec", loop, where)
    return where


def as_user(user, *cmd):
    return subprocess.run(cmd, user=user.pw_uid, group=user.pw_gid, extra_groups=[], capture_output=True, text=True,
                          timeout=60)


def test_a_users_vault_mounts_degraded_takes_the_backup_later_and_survives_the_primary_pulled(tmp_path):
    """The whole life of an automount for a desktop user, with what the units run: the
    primary plugged in alone mounts degraded after the bounded wait (and says so in the
    user's journal); only that user can enter the mount; the backup plugged in later is
    synced and mirrored to; the primary pulled stops the service (BindsTo its device):
    nothing written is lost, the backup is left clean, and once the primary is back both
    check clean."""
    with drives.workdir() as w, drives.standin_vault(w, ("exfat", 64), ("ext4", 64)) as v, \
            users.made_users("pqcfs-t-alice", "pqcfs-t-bob") as (alice, bob):
        v.mount()
        with open(os.path.join(v.mountpoint, "hello"), "w") as f:
            f.write("made before")
        v.umount()
        media = os.path.join(w, "media")
        os.mkdir(media, 0o755)
        mountpoint = os.path.join(media, "Vault")     # missing: made for alice by the mount
        drives.pqcfs("system", "install", "--root", str(tmp_path / "root"))
        doc = json.loads(drives.pqcfs("automount", "enable", v.primary, "--at", mountpoint, "--root",
                                      str(tmp_path / "root"), "--json", "--unlock", "passfile", "--passfile",
                                      v.passfile, "--wait-backup", "2", "--user", alice.pw_name).stdout)
        service = read(next(f for f in doc["files"] if f.endswith(".service")))
        start, stop = systemd_words(unit_value(service, "ExecStart")), systemd_words(unit_value(service, "ExecStop"))
        assert start[start.index("--user") + 1] == alice.pw_name
        header = json.loads(drives.pqcfs("info", v.primary, "--json").stdout)
        uuid = {r["role"]: r["fs_uuid"] for r in header["replicas"]}
        loops = [drives.run("losetup", "-j", image).stdout.split(":")[0] for image in v.images]
        drives.unmount(v.primary)           # both drives unplugged
        drives.unmount(v.backup)
        notify, journal = NotifySocket(os.path.join(w, "notify")), JournalSocket(os.path.join(w, "journal"))
        env = dict(os.environ, NOTIFY_SOCKET=notify.path, PQCFS_JOURNAL_SOCKET=journal.path,
                   PQCFS_REJOIN_INTERVAL="0.5")
        mounted, new_loops, proc = [], [], None
        try:
            # The primary alone: mounted after the bounded wait, degraded, and it says so.
            mounted.append(unit_mount(loops[0], "exfat", uuid["primary"]))
            began = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "pqcfs", *start[1:], "--allow-fixed"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            got = notify.wait_for("READY=1", 60, proc)
            assert "READY=1" in got, proc.stderr.read().decode() if proc.poll() is not None else got
            assert time.monotonic() - began >= 2
            degraded = [f for uid, f in journal.receive() if "DEGRADED" in f["MESSAGE"]]
            assert degraded and all(uid == alice.pw_uid for uid, f in journal.entries)
            assert degraded[0]["PRIORITY"] == "4" and degraded[0]["SYSLOG_IDENTIFIER"] == "pqcfs"

            # Alice's mount: hers to read and write; bob and root see nothing inside.
            assert as_user(alice, "cat", f"{mountpoint}/hello").stdout == "made before"
            assert as_user(alice, "sh", "-c", f"echo by alice > {mountpoint}/mine").returncode == 0
            assert as_user(alice, "stat", "-c", "%u", mountpoint).stdout.strip() == str(alice.pw_uid)
            assert "Permission denied" in as_user(bob, "ls", mountpoint).stderr
            with pytest.raises(PermissionError):
                os.listdir(mountpoint)
            # Alice's own `pqcfs status` finds it (no login session here: the copy of the
            # runtime file root's daemon left her under /run/pqcfs/users), bob's does not.
            hers = json.loads(users.pqcfs_as(alice, "status", "--json", check=False).stdout)["mounts"]
            assert [(m["mountpoint"], m["health"], m["user"]) for m in hers] == [(mountpoint, "degraded",
                                                                                  alice.pw_name)]
            assert json.loads(users.pqcfs_as(bob, "status", "--json").stdout)["mounts"] == []

            # The backup plugged in later: its mount unit runs, the daemon takes it in.
            mounted.append(unit_mount(loops[1], "ext4", uuid["backup"]))
            deadline = time.monotonic() + 60
            while json.loads(drives.pqcfs("status", mountpoint, "--json", check=False).stdout)["mounts"][0]["missing"]:
                assert time.monotonic() < deadline, "the backup plugged in later was never taken in"
                time.sleep(0.5)
            assert as_user(alice, "sh", "-c", f"echo mirrored > {mountpoint}/after && sync {mountpoint}/after"
                           ).returncode == 0

            # The primary pulled: the backup serves, then the service is stopped (ExecStop).
            drives.run("pkill", "-KILL", "-f", f"mount.exfat-fuse {loops[0]} ")
            time.sleep(0.3)
            assert as_user(alice, "sh", "-c", f"echo pulled > {mountpoint}/while-pulled").returncode == 0
            assert subprocess.run([sys.executable, "-m", "pqcfs", *stop[1:]], capture_output=True).returncode == 0
            assert proc.wait(timeout=60) == 0
            assert "STOPPING=1" in notify.drain()
            assert not drives.is_mounted(mountpoint)
            status = drives.pqcfs("status", mounted[1], "--json", check=False)
            replicas = {r["role"]: r for r in json.loads(status.stdout)["replicas"]}
            assert status.returncode == 12 and not replicas["primary"]["present"], status.stdout   # pulled
            assert replicas["backup"]["clean"] and replicas["backup"]["path"] == mounted[1], status.stdout

            # The primary back (a new device, checked, as a re-plugged stick): brought up
            # to date at the next mount; nothing is lost and both check clean.
            drives.unmount(mounted[0])
            drives.run("blockdev", "--flushbufs", loops[0], check=False)
            new_loops.append(drives.run("losetup", "--find", "--show", v.images[0]).stdout.strip())
            drives.run("fsck.exfat", "-y", new_loops[0], check=False)
            drives.run("mount.exfat-fuse", new_loops[0], mounted[0])
            drives.pqcfs("mount", mounted[0], v.mountpoint, "--passfile", v.passfile, "--allow-fixed")
            for name, text in [("hello", "made before"), ("mine", "by alice\n"), ("after", "mirrored\n"),
                               ("while-pulled", "pulled\n")]:
                with open(os.path.join(v.mountpoint, name)) as f:
                    assert f.read() == text
            v.umount()
            assert drives.pqcfs("fsck", mounted[0], "--passfile", v.passfile).returncode == 0
            assert drives.pqcfs("audit", "verify", mounted[0], "--passfile", v.passfile).returncode == 0
        finally:
            if proc is not None and proc.poll() is None:
                subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
                proc.wait(timeout=60)
            if proc is not None:
                proc.stderr.close()
            notify.close()
            journal.close()
            shutil.rmtree(os.path.join("/run/pqcfs/users", str(alice.pw_uid)), ignore_errors=True)
            v.umount()
            for where in reversed(mounted):
                unplug(where)
            for loop in new_loops:
                drives.run("losetup", "-d", loop, check=False)


def test_a_wheel_installation_gives_units_that_verify_with_no_checkout_on_the_path(tmp_path):
    """The wheel, installed into an environment of its own (this checkout nowhere on its
    path), then `pqcfs system install`: the units automount writes run a program that
    exists and is this version, and systemd-analyze verifies them; with that environment
    gone, doctor and automount enable say so instead of writing units that fail later."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), repo], check=True,
                   capture_output=True)
    venv = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Its dependencies (compiled ones among them) come from the test environment's
    # site-packages as a plain path: that directory's .pth files, the checkout's editable
    # hook among them, are not run, so pqcfs itself can only come from the wheel.
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site,
                    *map(str, wheels.glob("pqcfs-*.whl"))], check=True, capture_output=True)
    python = str(venv / "bin/python")

    def installed(*args):
        return subprocess.run([python, "-I", "-m", "pqcfs", *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120)
    where = subprocess.run([python, "-I", "-c", "import pqcfs; print(pqcfs.__file__)"], capture_output=True,
                           text=True).stdout.strip()
    assert where.startswith(str(venv)) and not where.startswith(repo)

    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    with drives.standin_vault(str(tmp_path), ("ext4", 32), ("ext4", 32)) as v:
        enable = ["automount", "enable", v.primary, "--at", v.mountpoint, "--root", str(root), "--unlock", "passfile",
                  "--passfile", v.passfile, "--json"]
        refused = installed(*enable)       # nothing installed yet: no unit that would fail at insertion
        assert refused.returncode == 15 and "system install" in refused.stderr, refused.stderr
        assert installed("system", "install", "--root", str(root)).returncode == 0
        assert install.parse_launcher((root / "usr/bin/pqcfs").read_bytes()).python == python
        doc = json.loads(installed(*enable).stdout)
        unit_files = [f for f in doc["files"] if f.endswith((".service", ".mount"))]
        proc = subprocess.run(["systemd-analyze", "verify", "--root", str(root), "--man=no", *unit_files],
                              capture_output=True, text=True)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr

        shutil.rmtree(venv)                 # the installation goes: both commands say so, with the fix
        gone = drives.pqcfs("doctor", "--root", str(root), "--json", check=False)
        launcher = next(c for c in json.loads(gone.stdout)["checks"] if c["what"] == str(root / "usr/bin/pqcfs"))
        assert gone.returncode == 15 and not launcher["ok"] and "gone" in launcher["detail"]
        again = drives.pqcfs(*enable, check=False)
        assert again.returncode == 15 and "gone" in again.stderr, again.stderr
