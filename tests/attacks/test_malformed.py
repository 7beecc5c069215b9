"""Hostile structures on a drive: tampered headers that try to stall or confuse unlock,
malformed records, bad entries among good ones, and a fuzzer over every on-disk
structure that accepts only documented exit codes, in bounded time.

PQCFS_FUZZ_CASES=N sets how many mutated vaults the fuzzer tries (default 120)."""

import json
import os
import random
import shutil
import stat
import time

import pytest

from pqcfs.fs.trees import open_tree
from pqcfs import vault as vault_mod
from pqcfs.cli import exitcodes
from pqcfs.cli import main as cli_main
from pqcfs.crypto import kdf
from pqcfs.errors import DamagedStructure, PqcfsError, WrongKey
from pqcfs.crypto.kdf import calibrate
from pqcfs.format import names, slots
from pqcfs.fs.common import Caller
from tests.attacks.forge import forge_everywhere, forge_header
from tests.conftest import PASSPHRASE

FUZZ_CASES = int(os.environ.get("PQCFS_FUZZ_CASES", "120"))
DOCUMENTED = {v for k, v in vars(exitcodes).items() if k.isupper() and isinstance(v, int)}
ME = Caller(uid=1000, gid=1000)


def creds(passphrase=PASSPHRASE):
    return vault_mod.Credentials(passphrase=passphrase)


@pytest.fixture
def argon_calls(monkeypatch):
    calls = []
    real = kdf.hash_secret_raw

    def counting(*args, **kwargs):
        calls.append(kwargs.get("memory_cost"))
        return real(*args, **kwargs)
    monkeypatch.setattr(kdf, "hash_secret_raw", counting)
    return calls


def test_kdf_parameters_above_the_ceiling_are_refused_without_running(new_vault, argon_calls):
    vault, _ = new_vault

    def huge(body):
        body["slots"][0]["kdf"].update(memory_kib=4 * 1024 * 1024, iterations=64)
    forge_everywhere(vault.locations, huge)
    start = time.monotonic()
    with pytest.raises(WrongKey):
        vault_mod.unlock(vault.locations, creds())
    assert time.monotonic() - start < 5 and argon_calls == []


def test_work_ceiling_sits_near_calibration():
    ceiling = kdf.Argon2Params(kdf.CEILING["memory_kib"], 4, 1, b"s" * 16)
    ceiling.validate()   # 1 GiB, t=4 (what calibration gives for several seconds) is allowed
    for memory, passes in ((kdf.CEILING["memory_kib"], 5), (2 * kdf.CEILING["memory_kib"], 2), (64 * 1024, 64)):
        with pytest.raises(PqcfsError):
            kdf.Argon2Params(memory, passes, 1, b"s" * 16).validate()


def test_passphrase_slots_tried_are_capped_and_slot_picks_one(new_vault, argon_calls):
    vault, _ = new_vault

    def many(body):
        first = body["slots"][0]
        body["slots"] += [dict(first, id=100 + n) for n in range(20)]
    forge_everywhere(vault.locations, many)
    with pytest.raises(WrongKey):
        vault_mod.unlock(vault.locations, creds(b"wrong passphrase"))
    assert len(argon_calls) == vault_mod.MAX_PASSPHRASE_TRIES
    argon_calls.clear()
    with pytest.raises(WrongKey):
        vault_mod.unlock(vault.locations, creds(b"wrong passphrase"), slot=107)
    assert len(argon_calls) == 1
    # A copied slot is never a way in (its AAD names slot 1), and the right passphrase in
    # the right slot finds the header changed without the key.
    with pytest.raises(WrongKey):
        vault_mod.unlock(vault.locations, creds(), slot=107)
    with pytest.raises(DamagedStructure, match="modified without the key"):
        vault_mod.unlock(vault.locations, creds(), slot=1)


def test_too_many_slots_is_damage(new_vault):
    vault, _ = new_vault
    forge_everywhere(vault.locations, lambda body: body["slots"].extend(
        dict(body["slots"][0], id=200 + n) for n in range(40)))
    with pytest.raises(DamagedStructure, match="key slots"):
        vault_mod.read_header(vault.locations[0])


def test_key_commitment_makes_every_slot_failure_one_answer(new_vault):
    vault, _ = new_vault
    assert all("commit" in s for s in vault.header.slots)

    def other_commit(body):
        body["slots"][0]["commit"] = "00" * 32
    forge_everywhere(vault.locations, other_commit)
    with pytest.raises(WrongKey):
        vault_mod.unlock(vault.locations, creds())


def test_a_header_changed_on_one_drive_heals_from_the_other(new_vault):
    """The attacker had one drive: its copy of the header is changed (wrong types, a slot
    that opens nothing, a stripped commitment); the other drive's copy opens the vault and
    the changed one is named for healing."""
    vault, _ = new_vault
    for mutate in (lambda b: b["slots"][0].update(kdf=[1, 2]), lambda b: b["slots"][0].update(commit="00" * 32),
                   lambda b: b["slots"][0].pop("commit"), lambda b: b.update(created="x")):
        forge_header(vault.locations[0], mutate)
        opened = vault_mod.unlock(vault.locations, creds())
        assert [loc for loc, _ in opened.damaged_headers] == [vault.locations[0]]
        opened.heal_headers()
        assert vault_mod.unlock(vault.locations, creds()).damaged_headers == []
        opened.close()


def test_a_newer_header_copy_is_never_rolled_back_to_an_older_one(new_vault):
    """A passphrase removed on the primary's copy (authentic, newer) still opens the
    backup's older copy: refused as a wrong passphrase, and nothing is rewritten."""
    vault, _ = new_vault
    vault.header.slots.append(slots.passphrase_slot(vault.header.next_slot_id(), vault.root_key,
                                                    vault.header.vault_id, b"second passphrase", calibrate()))
    vault.save_header()
    vault.header.slots.pop()
    vault.save_header(only=[0])            # the primary's copy is newer: the slot is gone there
    with pytest.raises(WrongKey):
        vault_mod.unlock(vault.locations, vault_mod.Credentials(passphrase=b"second passphrase"))
    assert vault_mod.unlock(vault.locations, creds()).damaged_headers == []


@pytest.mark.parametrize("mutate", [
    lambda b: b["slots"][0].update(id="1"),
    lambda b: b["slots"][0].update(kdf=[1, 2]),
    lambda b: b["slots"][0].update(type=["passphrase"]),
    lambda b: b.update(replicas=[1, 2]),
    lambda b: b.update(slots={"a": 1}),
    lambda b: b.update(features="x"),
    lambda b: b["replicas"][0].update(path_hint=["/etc"]),
], ids=["slot-id", "kdf", "type", "replicas", "slots", "features", "path-hint"])
def test_wrong_types_in_the_header_are_damage(new_vault, mutate):
    vault, _ = new_vault
    forge_everywhere(vault.locations, mutate)
    with pytest.raises(DamagedStructure):
        vault_mod.unlock(vault.locations, creds())


def test_wrong_types_in_the_state_are_damage(new_vault):
    vault, _ = new_vault
    path = os.path.join(vault.locations[0], "pqcfs.state")
    with open(path, "rb") as f:
        body, mac = f.read().rstrip(b"\n").split(b"\n")
    for field, value in (("lineage", "abc"), ("generation", "1"), ("audit_head", {"seq": "x", "mac": 1}),
                         ("missing", [1])):
        doc = json.loads(body)
        doc[field] = value
        with open(path, "wb") as f:
            f.write(json.dumps(doc).encode() + b"\n" + mac + b"\n")
        with pytest.raises(DamagedStructure):
            vault_mod.read_state(vault.locations[0], None)


def fs_of(vault):
    return open_tree(vault)


def test_one_bad_entry_fails_alone(new_vault):
    vault, _ = new_vault
    fs = fs_of(vault)
    root = fs.inodes.root
    for n in range(5):
        fs.create_file(root, b"file-%d" % n, stat.S_IFREG | 0o644, ME, content=b"x%d" % n)
    fs.create_file(root, b"L" * 200, stat.S_IFREG | 0o644, ME, content=b"long")
    victim = names.on_disk_name(names.encrypt_name(root.keys, b"file-2"))
    long_disk = names.on_disk_name(names.encrypt_name(root.keys, b"L" * 200))
    for location in vault.locations:
        with open(os.path.join(location, "tree", victim), "r+b") as f:
            f.write(b"PQCF\x09")                              # a header of a newer version
        with open(os.path.join(location, "tree", long_disk + names.LONG_SUFFIX), "ab") as f:
            f.write("é".encode())                              # a non-ASCII byte in a sidecar
    fresh = fs_of(vault)
    listing = dict(fresh.listdir(fresh.inodes.root))
    # Format 2 lists names from the directory table (the sidecar is not read) and reads a
    # file's header when it is opened; format 1 decrypts names and headers when listing.
    assert b"file-2" in listing and (b"L" * 200 in listing) == vault.tables
    for n in (0, 1, 3, 4):
        node = fresh.entry(fresh.inodes.root, b"file-%d" % n, listing[b"file-%d" % n])
        assert fresh.read_all(node) == b"x%d" % n
    with pytest.raises(PqcfsError):
        fresh.read_all(fresh.entry(fresh.inodes.root, b"file-2", listing[b"file-2"]))


def test_fsck_reports_a_newer_node_header_and_goes_on(new_vault, capsys, monkeypatch):
    vault, _ = new_vault
    fs = fs_of(vault)
    fs.create_file(fs.inodes.root, b"newer", stat.S_IFREG | 0o644, ME, content=b"n")
    fs.create_file(fs.inodes.root, b"fine", stat.S_IFREG | 0o644, ME, content=b"f")
    disk = names.on_disk_name(names.encrypt_name(fs.inodes.root.keys, b"newer"))
    with open(os.path.join(vault.locations[0], "tree", disk), "r+b") as f:
        f.write(b"PQCF\x07")
    code = run_cli(monkeypatch, "fsck", vault.locations[0], *unlock_args(vault))
    out = capsys.readouterr().out
    # Format 2 names both nodes from the table and finds the header when it opens the file.
    assert code == exitcodes.CRYPTO and "version 7" in out and f"checked {2 if vault.tables else 1} nodes" in out


# --- the fuzzer -----------------------------------------------------------------------

def unlock_args(vault):
    passfile = os.path.join(os.path.dirname(vault.locations[0]), "passfile")
    with open(passfile, "wb") as f:
        f.write(PASSPHRASE + b"\n")
    return ["--passfile", passfile, "--backup", vault.locations[1]]


def run_cli(monkeypatch, *argv):
    monkeypatch.setattr("pqcfs.hygiene.harden", lambda: {})   # not on the test runner itself
    return cli_main.main(list(argv))


def structures(location: str) -> list[str]:
    out = []
    for dirpath, _, filenames in os.walk(location):
        for name in filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), location))
    return sorted(out)


def mutate(data: bytes, rng: random.Random) -> bytes:
    how = rng.choice(["flip", "cut", "grow", "zero", "json", "swap"])
    if not data:
        return os.urandom(rng.randrange(1, 200))
    at = rng.randrange(len(data))
    if how == "flip":
        out = bytearray(data)
        out[at] ^= 1 << rng.randrange(8)
        return bytes(out)
    if how == "cut":
        return data[:at]
    if how == "grow":
        return data + os.urandom(rng.randrange(1, 5000))
    if how == "zero":
        return bytes(len(data))
    if how == "json":
        return json.dumps(rng.choice([[], {}, None, 1, "x", {"format": 1}, [{"id": "a"}]])).encode()
    return data[at:] + data[:at]


def test_fuzz_every_on_disk_structure(new_vault, tmp_path, monkeypatch, capsys):
    vault, _ = new_vault
    fs = fs_of(vault)
    root = fs.inodes.root
    docs = fs.mkdir(root, b"docs", 0o755, ME)
    fs.create_file(docs, b"a.txt", stat.S_IFREG | 0o644, ME, content=os.urandom(9000))
    fs.create_file(root, b"N" * 200, stat.S_IFREG | 0o644, ME, content=b"long")
    fs.set_xattr(fs.lookup(root, b"N" * 200), b"user.k", b"v")
    moved = fs.mkdir(root, b"moved", 0o755, ME)
    fs.rename(docs, b"a.txt", moved, b"a.txt")
    run_cli(monkeypatch, "keys", "add", vault.locations[0], *unlock_args(vault), "--recovery-code")
    pristine = str(tmp_path / "pristine")
    shutil.copytree(os.path.dirname(vault.locations[0]), pristine)
    targets = [(n, rel) for n, loc in enumerate(vault.locations) for rel in structures(loc)]
    rng = random.Random(7)
    seen = set()
    deadline = time.monotonic() + 600
    for case in range(FUZZ_CASES):
        assert time.monotonic() < deadline, "the fuzzer ran out of time"
        for loc in vault.locations:
            shutil.rmtree(loc)
            shutil.copytree(os.path.join(pristine, os.path.basename(loc)), loc)
        n, rel = targets[case % len(targets)]
        path = os.path.join(vault.locations[n], rel)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(mutate(data, rng))
        for argv in (["info", vault.locations[0]],
                     ["fsck", vault.locations[0], *unlock_args(vault), "--repair"],
                     ["audit", "verify", vault.locations[0], *unlock_args(vault)],
                     ["status", vault.locations[0]]):
            code = run_cli(monkeypatch, *argv)
            err = capsys.readouterr().err
            assert code in DOCUMENTED and "internal error" not in err and "Traceback" not in err, \
                (case, rel, argv[0], code, err)
            seen.add(code)
    assert exitcodes.OK in seen and len(seen) > 2
