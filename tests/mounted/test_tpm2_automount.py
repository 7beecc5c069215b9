"""`pqcfs automount enable --unlock tpm2`: the unit the service runs unlocks with this
machine's TPM (swtpm here) and mounts the vault unattended, with and without a PIN file;
the same unit on another machine's TPM refuses. (As in test_automount.py: no systemd PID 1,
the drives' mount units stood in for by bind mounts.)"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.mounted import drives
from tests.mounted.test_automount import (NotifySocket, bind_drive, enable, read, systemd_words, unit_value,
                                          unplug)
from tests.swtpm import swtpm

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse"),
              pytest.mark.skipif(shutil.which("swtpm") is None or shutil.which("tpm2_unseal") is None,
                                 reason="needs swtpm and tpm2-tools (scripts/dev.sh installs them)")]


@pytest.mark.parametrize("with_pin", [False, True])
def test_the_service_unlocks_with_the_tpm_and_only_this_machines(tmp_path, with_pin):
    work = str(tmp_path)
    with drives.standin_vault(work, ("ext4", 48), ("ext4", 48)) as v, swtpm(work) as tpm:
        v.mount()
        with open(os.path.join(v.mountpoint, "hello"), "w") as f:
            f.write("unlocked by the TPM")
        v.umount()
        pin_args = []
        if with_pin:
            pin = os.path.join(work, "tpm-pin")
            with open(pin, "w") as f:
                f.write("8642\n")
            os.chmod(pin, 0o600)
            pin_args = ["--pin-file", pin]
        drives.pqcfs("keys", "add", v.primary, "--passfile", v.passfile, "--tpm2", "--tcti", tpm.tcti, *pin_args)
        refused = drives.pqcfs("automount", "enable", v.primary, "--at", v.mountpoint, "--root",
                               str(tmp_path / "root"), "--unlock", "tpm2", "--tcti", "swtpm:host=x;rm -rf /,port=1",
                               check=False)
        assert refused.returncode != 0 and "unsafe TPM TCTI" in refused.stderr, refused.stderr
        doc = enable(v, tmp_path / "root", "--unlock", "tpm2", "--tcti", tpm.tcti, *pin_args, "--wait-backup", "5")
        service = read(next(f for f in doc["files"] if f.endswith(".service")))
        start, stop = systemd_words(unit_value(service, "ExecStart")), systemd_words(unit_value(service, "ExecStop"))
        assert "--tpm2" in start and tpm.tcti in start and ("--pin-file" in start) == with_pin
        doctor = drives.pqcfs("doctor", "--root", str(tmp_path / "root"), check=False).stdout
        assert f"unlocks with the TPM at {tpm.tcti}: it answers" in doctor, doctor
        header = json.loads(drives.pqcfs("info", v.primary, "--json").stdout)
        uuid = {r["role"]: r["fs_uuid"] for r in header["replicas"]}
        binds, notify = [], NotifySocket(os.path.join(work, "notify"))
        env = dict(os.environ, NOTIFY_SOCKET=notify.path)
        try:
            binds += [bind_drive(v.primary, uuid["primary"]), bind_drive(v.backup, uuid["backup"])]
            proc = subprocess.Popen([sys.executable, "-m", "pqcfs", *start[1:], "--allow-fixed"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            got = notify.wait_for("READY=1", 60, proc)
            assert "READY=1" in got, proc.stderr.read().decode() if proc.poll() is not None else got
            with open(os.path.join(v.mountpoint, "hello")) as f:
                assert f.read() == "unlocked by the TPM"
            assert subprocess.run([sys.executable, "-m", "pqcfs", *stop[1:]], capture_output=True).returncode == 0
            assert proc.wait(timeout=60) == 0
            proc.stdout.close()
            proc.stderr.close()
            # The drives and the unit taken to another machine: its TPM does not hold the key.
            with swtpm(work) as other:
                words = [w.replace(tpm.tcti, other.tcti) for w in start[1:]]
                r = subprocess.run([sys.executable, "-m", "pqcfs", *words, "--allow-fixed"], env=env,
                                   capture_output=True, text=True, timeout=60)
                assert r.returncode == 6 and "does not hold the slot's sealed key" in r.stderr, r.stderr
                assert not drives.is_mounted(v.mountpoint)
        finally:
            notify.close()
            v.umount()
            for where in reversed(binds):
                unplug(where)
