"""TPM2 key slots against a real TPM simulator (swtpm, one instance per machine): the slot
opens on its machine with and without a PIN, and on no other; every refusal is a clear
error (wrong PIN with the tries left, lockout, a changed PCR named, no TPM, another
machine's TPM, a removed slot, also from an old copy of the header)."""

from __future__ import annotations

import json
import shutil

import pytest

from pqcfs.cli import exitcodes
from tests.api.test_cli import pqcfs
from tests.swtpm import swtpm

pytestmark = pytest.mark.skipif(shutil.which("swtpm") is None or shutil.which("tpm2_unseal") is None,
                                reason="needs swtpm and tpm2-tools (scripts/dev.sh installs them)")


@pytest.fixture
def machine(tmp_path):
    """A vault on two directories, and this machine's TPM."""
    a, b, pw = tmp_path / "a", tmp_path / "b", tmp_path / "pw"
    a.mkdir(), b.mkdir()
    pw.write_text("hunter2\n")
    r = pqcfs("init", str(a), str(b), "--passfile", str(pw), "--allow-fixed", "--allow-same-device")
    assert r.returncode == 0, r.stderr
    with swtpm(str(tmp_path)) as tpm:
        yield a, b, pw, tmp_path, tpm


def unlock(a, tpm, *extra):
    """A command that only unlocks and reads (fsck), with the TPM slot."""
    return pqcfs("fsck", str(a), "--tpm2", "--tcti", tpm.tcti, *extra)


def add(a, pw, tpm, *extra):
    r = pqcfs("keys", "add", str(a), "--passfile", str(pw), "--tpm2", "--tcti", tpm.tcti, "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_slot_without_pin_unlocks_on_its_machine_only(machine):
    a, b, pw, tmp, tpm = machine
    added = add(a, pw, tpm)
    listing = json.loads(pqcfs("keys", "list", str(a), "--json").stdout)["slots"]
    assert any(s["type"] == "tpm2" and "no PCRs, no PIN" in s["description"] for s in listing)
    r = unlock(a, tpm)
    assert r.returncode == 0, r.stderr
    audit = pqcfs("audit", "show", str(a), "--passfile", str(pw), "--json")
    events = [e for e in json.loads(audit.stdout)["records"] if e.get("event") == "unlock"]
    assert any(e.get("slot") == added["slot"] and e.get("slot_type") == "tpm2" for e in events), events
    # The vault copied to another machine (another TPM): refused, and said why.
    with swtpm(str(tmp)) as elsewhere:
        r = unlock(a, elsewhere)
        assert r.returncode == exitcodes.WRONG_KEY and "does not hold the slot's sealed key" in r.stderr, r.stderr
    # No TPM at all: the set-up, not the key.
    r = pqcfs("fsck", str(a), "--tpm2", "--tcti", "swtpm:host=127.0.0.1,port=1")
    assert r.returncode == exitcodes.SETUP and "no TPM answers" in r.stderr, r.stderr


def test_a_pin_slot_counts_wrong_pins_and_locks_out(machine):
    a, b, pw, tmp, tpm = machine
    pin, bad = tmp / "pin", tmp / "bad-pin"
    pin.write_text("2468\n")
    bad.write_text("1357\n")
    add(a, pw, tpm, "--pin-file", str(pin))
    assert unlock(a, tpm, "--pin-file", str(pin)).returncode == 0
    r = unlock(a, tpm)                     # no PIN given, no terminal to ask at
    assert r.returncode == exitcodes.WRONG_KEY and "needs its PIN" in r.stderr, r.stderr
    r = unlock(a, tpm, "--pin-file", str(bad))
    assert r.returncode == exitcodes.WRONG_KEY and "wrong PIN (2 tries left" in r.stderr, r.stderr
    unlock(a, tpm, "--pin-file", str(bad))
    unlock(a, tpm, "--pin-file", str(bad))
    r = unlock(a, tpm, "--pin-file", str(pin))       # the right PIN, but the TPM locked out
    assert r.returncode == exitcodes.WRONG_KEY and "lockout" in r.stderr, r.stderr
    tpm.tool("tpm2_dictionarylockout", "--clear-lockout")
    assert unlock(a, tpm, "--pin-file", str(pin)).returncode == 0
    # The passphrase still opens the vault whatever the TPM says.
    assert pqcfs("fsck", str(a), "--passfile", str(pw)).returncode == 0
    # Every refusal was recorded (on this machine, then in the vault's log at the next unlock).
    records = json.loads(pqcfs("audit", "show", str(a), "--passfile", str(pw), "--json").stdout)["records"]
    failed = [r for r in records if r.get("event") == "host-unlock-failed" and r.get("reason") == "TpmError"]
    assert len(failed) >= 5, failed


def test_a_changed_pcr_is_named_and_refused(machine):
    a, b, pw, tmp, tpm = machine
    pin = tmp / "pin"
    pin.write_text("2468\n")
    added = add(a, pw, tpm, "--pcrs", "16", "--pin-file", str(pin))
    assert added["pcrs"] == [16]
    assert "PCRs 16 (sha256), PIN" in pqcfs("keys", "list", str(a)).stdout
    assert unlock(a, tpm, "--pin-file", str(pin)).returncode == 0
    tpm.tool("tpm2_pcrextend", "16:sha256=" + "5a" * 32)        # what a changed boot measurement does
    r = unlock(a, tpm, "--pin-file", str(pin))
    assert r.returncode == exitcodes.WRONG_KEY and "PCR 16 changed" in r.stderr, r.stderr


def test_a_removed_slot_opens_nothing_even_from_an_old_header(machine):
    a, b, pw, tmp, tpm = machine
    added = add(a, pw, tpm)
    old = {(d, n): (d / n).read_bytes() for d in (a, b) for n in ("pqcfs.vault", "pqcfs.vault.spare")}
    assert unlock(a, tpm).returncode == 0
    r = pqcfs("keys", "remove", str(a), str(added["slot"]), "--passfile", str(pw), "--tcti", tpm.tcti)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    r = unlock(a, tpm)
    assert r.returncode == exitcodes.WRONG_KEY and "no TPM2 slot" in r.stderr, r.stderr
    # Someone kept a copy of the header from before the removal and puts it back: the slot
    # is there, but its key is gone from the TPM.
    for (d, n), data in old.items():
        (d / n).write_bytes(data)
    r = unlock(a, tpm)
    assert r.returncode == exitcodes.WRONG_KEY and "does not hold the slot's sealed key" in r.stderr, r.stderr


def test_the_tpm_keeps_no_transient_objects_after_unlocks(machine):
    """swtpm has no resource manager and three transient object slots: every context an
    unlock loads is flushed (else the fourth command fails)."""
    a, b, pw, tmp, tpm = machine
    pin = tmp / "pin"
    pin.write_text("2468\n")
    add(a, pw, tpm, "--pcrs", "16", "--pin-file", str(pin))
    for _ in range(4):
        assert unlock(a, tpm, "--pin-file", str(pin)).returncode == 0
    assert tpm.tool("tpm2_getcap", "handles-transient").strip() == ""
    assert tpm.tool("tpm2_getcap", "handles-loaded-session").strip() == ""


def test_a_crafted_tpm_slot_touches_no_handle_outside_pqcfs_range(machine):
    """A header's slot names the TPM handle to unseal: one outside pqcfs' own range is
    refused before the TPM is asked (a drive must not point pqcfs at another secret)."""
    from pqcfs.errors import WrongKey
    from pqcfs.store import tpm2
    a, b, pw, tmp, tpm = machine
    with pytest.raises(WrongKey, match="outside pqcfs' range"):
        tpm2.Tpm(tpm.tcti).unseal({"handle": 0x81000001, "name": "00", "pcrs": []}, None)
    with pytest.raises(Exception, match="PCR"):
        tpm2.parse_pcrs("0,99")
