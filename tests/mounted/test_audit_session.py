"""Every audit event appears in the log of real sessions, and the log verifies."""

import json
import os

import pytest

from tests.mounted import drives

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]


def corrupt_first_block(location: str, name_filter) -> None:
    tree = os.path.join(location, "tree")
    victim = next(os.path.join(tree, n) for n in sorted(os.listdir(tree)) if name_filter(os.path.join(tree, n)))
    with open(victim, "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_every_event_lands_in_the_log(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    v = drives.Vault(str(tmp_path), str(a), str(b))
    v.mount_flags = ["--allow-same-device"]
    pw = ["--passfile", v.passfile]
    drives.pqcfs("init", str(a), str(b), *pw, "--allow-fixed", "--allow-same-device")
    drives.pqcfs("identity", "new", *pw)
    drives.pqcfs("identity", "export", "-o", str(tmp_path / "me.pub"))
    drives.pqcfs("keys", "add", str(a), *pw, "--public-key", str(tmp_path / "me.pub"))
    (tmp_path / "new").write_text(drives.PASSPHRASE + "\n")
    drives.pqcfs("passwd", str(a), *pw, "--new-passfile", str(tmp_path / "new"))
    (tmp_path / "wrong").write_text("wrong\n")
    assert drives.pqcfs("keys", "add", str(a), "--passfile", str(tmp_path / "wrong"), "--recovery-code",
                        check=False).returncode == 6
    try:
        # A session with an identity (signed checkpoint at unmount) and per-file events.
        drives.pqcfs("mount", str(a), v.mountpoint, "--identity", *pw, "--allow-fixed", "--allow-same-device",
                     "--audit-files")
        for name in ("healme", "broken"):
            with open(os.path.join(v.mountpoint, name), "wb") as f:
                f.write(os.urandom(20000))
        with open(os.path.join(v.mountpoint, "healme"), "rb") as f:
            f.read()
        v.umount()
        # Bit rot on the primary (healed) and on both drives (an integrity failure).
        sizes = sorted((os.path.getsize(os.path.join(a, "tree", n)), n) for n in os.listdir(a / "tree") if "." not in n)
        heal_name, broken_name = sizes[0][1], sizes[1][1]
        corrupt_first_block(str(a), lambda p: p.endswith(heal_name))
        for loc in (a, b):
            corrupt_first_block(str(loc), lambda p: p.endswith(broken_name))
        v.mount()
        for name in ("healme", "broken"):
            try:
                with open(os.path.join(v.mountpoint, name), "rb") as f:
                    f.read()
            except OSError:
                pass
        v.umount()
        # A session without the backup (degraded), then one that brings it back (sync).
        os.rename(b, tmp_path / "away")
        drives.pqcfs("mount", str(a), v.mountpoint, *pw, "--allow-fixed")
        v.umount()
        os.rename(tmp_path / "away", b)
        v.mount()
        v.umount()
        drives.pqcfs("fsck", str(a), *pw, "--backup", str(b), check=False)
        drives.pqcfs("keys", "remove", str(a), *pw, "3")
    finally:
        v.umount()
    shown = json.loads(drives.pqcfs("audit", "show", str(a), *pw, "--json").stdout)
    events = {r["event"] for r in shown["records"]}
    expected = {"init", "unlock", "key-slot-added", "passphrase-changed", "host-unlock-failed", "mount",
                "unmount", "create", "open", "checkpoint", "self-heal", "integrity-failure", "degraded",
                "sync", "fsck", "key-slot-removed"}
    assert expected <= events, expected - events
    assert shown["intact"]
    assert not any("healme" in json.dumps(r) for r in shown["records"] if r["event"] == "self-heal")
    assert drives.pqcfs("audit", "verify", str(a), *pw, "--backup", str(b)).returncode == 0
    assert drives.pqcfs("audit", "verify", str(a), "--public-key", str(tmp_path / "me.pub")).returncode == 0
    filtered = json.loads(drives.pqcfs("audit", "show", str(a), *pw, "--event", "mount", "--json").stdout)
    assert {r["event"] for r in filtered["records"]} == {"mount"}
    # Nothing readable on the drive: not the file names of the per-file events.
    with open(a / "pqcfs.audit", "rb") as f:
        raw = f.read()
    assert b"healme" not in raw and b"create" not in raw
    # And tampering with the drive's copy is reported with the record number.
    with open(a / "pqcfs.audit", "r+b") as f:
        f.seek(len(raw) // 2)
        f.write(b"\x00\x01\x02")
    broken = drives.pqcfs("audit", "verify", str(a), *pw, "--backup", str(b), check=False)
    assert broken.returncode == 10 and "BROKEN at record" in broken.stdout
