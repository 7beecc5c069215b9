"""Vault header, key slots, wrong keys, tampering, identities."""

import base64
import os
import pathlib

import pytest

from pqcfs import vault as vault_mod
from pqcfs.crypto.kdf import calibrate
from pqcfs.errors import DamagedStructure, NotAVault, PqcfsError, UnsupportedVersion, WrongKey
from pqcfs.format import identity as identity_fmt
from pqcfs.format import node_header, replica_state, slots, vault_header
from pqcfs.vault import Credentials
from tests.conftest import PASSPHRASE


def test_unlock_with_passphrase_recovery_and_identity(two_dirs, new_vault):
    vault, code = new_vault
    assert vault_mod.unlock(list(two_dirs), Credentials(passphrase=PASSPHRASE)).root_key == vault.root_key
    assert vault_mod.unlock(list(two_dirs), Credentials(recovery_code=code)).root_key == vault.root_key
    ident = identity_fmt.Identity.generate("xwing")
    vault.add_identity(ident.public, "laptop")
    assert vault_mod.unlock(list(two_dirs), Credentials(identity=ident)).root_key == vault.root_key


def test_wrong_keys_are_refused(two_dirs, new_vault):
    with pytest.raises(WrongKey):
        vault_mod.unlock(list(two_dirs), Credentials(passphrase=b"wrong"))
    with pytest.raises(WrongKey):
        vault_mod.unlock(list(two_dirs), Credentials(recovery_code=os.urandom(20)))
    with pytest.raises(WrongKey):
        vault_mod.unlock(list(two_dirs), Credentials(identity=identity_fmt.Identity.generate()))


def write_both_copies(location: str, data: bytes) -> None:
    for name in (vault_header.FILE_NAME, vault_header.SPARE_NAME):
        with open(os.path.join(location, name), "wb") as f:
            f.write(data)


def test_every_flipped_header_byte_is_refused(two_dirs, new_vault):
    path = os.path.join(two_dirs[0], vault_header.FILE_NAME)
    original = pathlib.Path(path).read_bytes()
    for offset in range(len(original)):
        damaged = bytearray(original)
        damaged[offset] ^= 0x01
        write_both_copies(two_dirs[0], damaged)
        with pytest.raises((DamagedStructure, NotAVault, UnsupportedVersion)):
            vault_mod.unlock([two_dirs[0]], Credentials(passphrase=PASSPHRASE))
    write_both_copies(two_dirs[0], original)
    vault_mod.unlock([two_dirs[0]], Credentials(passphrase=PASSPHRASE))


@pytest.mark.parametrize("damaged_copy", [vault_header.FILE_NAME, vault_header.SPARE_NAME])
def test_one_drive_alone_opens_through_its_other_copy_and_names_the_bad_one(two_dirs, new_vault, damaged_copy):
    """A --single vault's header has no other drive: the drive's spare copy stands in."""
    path = os.path.join(two_dirs[0], damaged_copy)
    data = bytearray(pathlib.Path(path).read_bytes())
    data[len(data) // 2] ^= 0x01
    pathlib.Path(path).write_bytes(data)
    vault = vault_mod.unlock([two_dirs[0]], Credentials(passphrase=PASSPHRASE))
    assert [loc for loc, _ in vault.damaged_headers] == [two_dirs[0]]
    assert vault.heal_headers() and vault_mod.unlock([two_dirs[0]], Credentials(passphrase=PASSPHRASE)
                                                     ).damaged_headers == []


def test_rewritten_header_with_valid_checksum_fails_the_mac(two_dirs, new_vault):
    # An attacker who recomputes the checksum still can not forge the MAC.
    header, _, _ = vault_mod.read_header(two_dirs[0])
    header.block_size = 8192
    forged = vault_header.encode(header, os.urandom(32))
    write_both_copies(two_dirs[0], forged)
    with pytest.raises(DamagedStructure, match="authentication"):
        vault_mod.unlock([two_dirs[0]], Credentials(passphrase=PASSPHRASE))


def test_newer_format_and_unknown_features_are_refused(two_dirs, new_vault):
    vault, _ = new_vault
    vault.header.features = ["from-the-future"]
    data = vault_header.encode(vault.header, vault.root_key)
    with pytest.raises(UnsupportedVersion, match="features"):
        vault_header.decode(data)
    newer = bytearray(data)
    newer[9] = 2  # version u16be low byte
    with pytest.raises(UnsupportedVersion):
        vault_header.decode(bytes(newer))


def test_not_a_vault(tmp_path):
    with pytest.raises(NotAVault):
        vault_mod.read_header(str(tmp_path))
    with pytest.raises(NotAVault):
        vault_mod.read_header(str(tmp_path / "missing"))


def test_init_refuses_non_empty_and_existing(two_dirs, new_vault, tmp_path):
    with pytest.raises(PqcfsError, match="already holds"):
        vault_mod.create([two_dirs[0]], passphrase=PASSPHRASE, kdf=calibrate())
    other = tmp_path / "other"
    other.mkdir()
    (other / "file").write_text("x")
    with pytest.raises(PqcfsError, match="not empty"):
        vault_mod.create([str(other)], passphrase=PASSPHRASE, kdf=calibrate())


def test_slots_add_remove_and_change_passphrase(two_dirs, new_vault):
    vault, _ = new_vault
    slot = vault.add_passphrase(b"second", calibrate())
    vault.change_passphrase(1, b"first-new", calibrate())
    with pytest.raises(WrongKey):
        vault_mod.unlock(list(two_dirs), Credentials(passphrase=PASSPHRASE))
    assert vault_mod.unlock(list(two_dirs), Credentials(passphrase=b"first-new")).slot_id == 1
    assert vault_mod.unlock(list(two_dirs), Credentials(passphrase=b"second")).slot_id == slot
    vault.remove_slot(1)
    with pytest.raises(WrongKey):
        vault_mod.unlock(list(two_dirs), Credentials(passphrase=b"first-new"))
    with pytest.raises(PqcfsError, match="last passphrase"):
        vault.remove_slot(slot)
    # Both replicas carry the same header.
    assert pathlib.Path(os.path.join(two_dirs[0], "pqcfs.vault")).read_bytes() == \
        pathlib.Path(os.path.join(two_dirs[1], "pqcfs.vault")).read_bytes()


def test_replica_state_is_authenticated(two_dirs, new_vault):
    vault, _ = new_vault
    state = vault_mod.read_state(two_dirs[0], vault.root_key)
    assert state.generation == 0 and state.clean
    path = os.path.join(two_dirs[0], replica_state.FILE_NAME)
    data = pathlib.Path(path).read_bytes().replace(b'"generation":0', b'"generation":9')
    with pytest.raises(DamagedStructure):
        replica_state.decode(data, vault.root_key)


def test_root_directory_id_file(two_dirs, new_vault):
    vault, _ = new_vault
    keys = vault.root_dir_keys()
    data = pathlib.Path(os.path.join(two_dirs[0], "tree", "d.id")).read_bytes()
    assert len(data) == node_header.HEADER_LEN
    meta = node_header.open_meta(keys.meta_key, data)
    assert meta.mode == 0o40755


def test_identity_file_round_trip_and_wrong_passphrase():
    ident = identity_fmt.Identity.generate()
    data = identity_fmt.encode_file(ident, b"pw", calibrate())
    assert identity_fmt.decode_file(data, b"pw") == ident
    assert identity_fmt.read_public(data) == ident.public
    assert identity_fmt.PublicIdentity.decode(ident.public.encode()) == ident.public
    with pytest.raises(WrongKey):
        identity_fmt.decode_file(data, b"nope")
    with pytest.raises(DamagedStructure):
        identity_fmt.PublicIdentity.decode("pqcfs-pub1:xwing:AAAA:AAAA")


def test_recovery_code_format():
    code = slots.new_recovery_code()
    shown = slots.format_recovery_code(code)
    assert slots.parse_recovery_code(shown.lower().replace("-", " ")) == code
    groups = shown.split("-")
    assert len(groups) == 8 and all(len(g) == 5 for g in groups)


def test_a_recovery_code_typo_names_its_group_and_old_codes_still_parse():
    code = bytes(range(20))
    groups = slots.format_recovery_code(code).split("-")
    missed = []
    for n in range(8):
        for pos in range(5):
            for wrong in "AQ7":
                typo = list(groups)
                if typo[n][pos] == wrong:
                    continue
                typo[n] = typo[n][:pos] + wrong + typo[n][pos + 1:]
                try:
                    slots.parse_recovery_code("-".join(typo))
                    missed.append((n, pos))
                except WrongKey as e:
                    assert f"group {n + 1} " in str(e)
    # One check character per group: a substitution slips through about 1 time in 32,
    # never one in the check character itself.
    assert all(pos < 4 for _, pos in missed) and len(missed) <= 12, missed
    swapped = list(groups)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    with pytest.raises(WrongKey, match="group 3"):
        slots.parse_recovery_code("-".join(swapped))
    # A code printed before the check characters: eight groups of four, no check.
    old = base64.b32encode(code).decode()
    assert slots.parse_recovery_code("-".join(old[i:i + 4] for i in range(0, 32, 4))) == code
    with pytest.raises(WrongKey, match="not a recovery code"):
        slots.parse_recovery_code("ABCD-EFGH")
