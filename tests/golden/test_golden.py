"""Golden vaults made by released format versions: every later pqcfs must open them."""

import json
import pathlib
import shutil
import stat

import pytest

from pqcfs.fs.grantee_tree import GranteeFS
from pqcfs.fs.trees import open_tree
from pqcfs import fsck, sharing, upgrade
from pqcfs.errors import PqcfsError
from pqcfs import vault as vault_mod
from pqcfs.format import identity as identity_fmt
from pqcfs.format import slots
from pqcfs.session import grantee
from pqcfs.fs.vaultfs import VaultFS
from pqcfs.store.drive import Drive
from pqcfs.store.replicas import ReplicaSet
from pqcfs.vault import Credentials

HERE = pathlib.Path(__file__).parent
VERSIONS = sorted(p.name for p in HERE.iterdir() if (p / "expected.json").exists())


@pytest.fixture(params=VERSIONS)
def golden(request, tmp_path, monkeypatch):
    # Golden vaults use real Argon2id parameters (the floor): no test switch needed.
    monkeypatch.delenv("PQCFS_INSECURE_FAST_KDF", raising=False)
    shutil.copytree(HERE / request.param, tmp_path / request.param)
    root = tmp_path / request.param
    return root, json.loads((root / "expected.json").read_text())


def walk(fs: VaultFS, path: str):
    node = fs.inodes.root
    for part in path.split("/"):
        node = fs.lookup(node, part.encode())
    return node


@pytest.mark.parametrize("how", ["passphrase", "recovery"])
def test_golden_vault_opens_and_reads(golden, how):
    check_golden(golden, how)


def check_golden(golden, how):
    root, exp = golden
    locations = [str(root / "primary"), str(root / "backup")]
    creds = (Credentials(passphrase=exp["passphrase"].encode()) if how == "passphrase"
             else Credentials(recovery_code=slots.parse_recovery_code(exp["recovery_code"])))
    vault = vault_mod.unlock(locations, creds)
    assert vault.header.version == exp["format"]
    fs = open_tree(vault, read_only=True)
    for path, text in exp["files"].items():
        assert fs.read_all(walk(fs, path)) == text.encode()
    assert fs.read_all(walk(fs, exp["blocks.bin"]["path"])) == bytes(range(256)) * 40
    for path, target in exp["symlink"].items():
        node = walk(fs, path)
        assert stat.S_ISLNK(node.meta.mode) and fs.read_all(node) == target.encode()
    assert stat.S_ISFIFO(walk(fs, exp["fifo"]).meta.mode)
    sparse = walk(fs, exp["sparse"]["path"])
    data = fs.read_all(sparse)
    assert len(data) == exp["sparse"]["size"] and data.endswith(b"end") and not any(data[:-3])
    for path, attrs in exp["xattrs"].items():
        assert fs.xattrs(walk(fs, path)) == {k.encode(): v.encode() for k, v in attrs.items()}
    for group in exp["hard_links"]:
        nodes = [walk(fs, path) for path in group]
        assert all(n is nodes[0] for n in nodes) and nodes[0].meta.nlink == len(group)
    for path, mode in exp["modes"].items():
        node = walk(fs, path)
        assert stat.S_IMODE(node.meta.mode) == mode
        assert (node.meta.uid, node.meta.gid) == (exp["uid"], exp["gid"])
    for path, (atime, mtime) in exp.get("times", {}).items():
        e = walk(fs, path).entry
        assert (e.atime, e.mtime) == (atime, mtime)
    return vault


def test_a_format_1_vault_upgrades_in_place_and_reads_the_same(tmp_path, monkeypatch):
    monkeypatch.delenv("PQCFS_INSECURE_FAST_KDF", raising=False)
    root = tmp_path / "v1"
    shutil.copytree(HERE / "v1", root)
    exp = json.loads((root / "expected.json").read_text())
    locations = [str(root / "primary"), str(root / "backup")]
    # Nothing a format 1 vault holds is rewritten: only tables are added, and the header.
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "pqcfs.vault"}
    # Format 2 requires key commitment, which v1's slots predate: each slot gets it when it
    # opens, and the upgrade waits until every slot has it.
    vault = vault_mod.unlock(locations, Credentials(passphrase=exp["passphrase"].encode()))
    with pytest.raises(PqcfsError, match="slot 2 \\(recovery code\\)"):
        upgrade.upgrade(vault)
    vault.close()
    vault = vault_mod.unlock(locations, Credentials(recovery_code=slots.parse_recovery_code(exp["recovery_code"])))
    assert upgrade.upgrade(vault) == 3      # the root, docs and docs/moved
    assert upgrade.upgrade(vault) == 0      # once is enough
    vault.close()
    assert all(p.read_bytes() == data for p, data in before.items() if p.name != "pqcfs.audit")
    dirs = [p for r in ("primary", "backup") for p in [root / r / "tree", *(root / r / "tree").rglob("*")]
            if p.is_dir() and p.name != "h.links"]
    assert len(dirs) == 6 and all((d / "d.t").is_file() for d in dirs)
    again = vault_mod.unlock(locations, Credentials(passphrase=exp["passphrase"].encode()))
    assert again.header.version == 2 and again.tables
    assert fsck.run(again).clean
    again.close()
    check_golden((root, dict(exp, format=2, times={})), "passphrase")


def test_golden_vault_refuses_wrong_passphrase(golden):
    root, _ = golden
    with pytest.raises(vault_mod.WrongKey):
        vault_mod.unlock([str(root / "primary")], Credentials(passphrase=b"not it"))


GRANTED = [v for v in VERSIONS if "grants" in json.loads((HERE / v / "expected.json").read_text())]


@pytest.mark.parametrize("version", GRANTED)
def test_golden_grants_open_for_owner_and_recipient(version, tmp_path, monkeypatch):
    monkeypatch.delenv("PQCFS_INSECURE_FAST_KDF", raising=False)
    shutil.copytree(HERE / version, tmp_path / version)
    root = tmp_path / version
    exp = json.loads((root / "expected.json").read_text())
    g = exp["grants"]
    locations = [str(root / "primary"), str(root / "backup")]
    # The owner lists them, with the path as it is now.
    vault = vault_mod.unlock(locations, Credentials(passphrase=exp["passphrase"].encode()))
    views = {v.grant_id: v for v in sharing.list_grants(vault, refresh=False)}
    assert set(views) == {x["id"] for x in g["granted"]}
    for x in g["granted"]:
        v = views[x["id"]]
        assert (v.path, v.label, v.recipient, v.rights == "read-only", v.expires) == \
            (x["path"], x["label"], g["recipient"], x["read_only"], x["expires"])
    vault.close()
    # The recipient opens them with the identity alone (no root key), checked against
    # the owner key, and reads through the granted directories.
    identity = identity_fmt.decode_file((root / g["identity"]).read_bytes(), g["passphrase"].encode())
    header = vault_mod.read_header(locations[0])[0]
    found = sharing.grants_for(header.grants, identity.public)
    assert len(found) == len(g["granted"])
    with Drive(locations[0]) as drive:
        opened = [sharing.open_grant(drive, record, header.vault_id, identity, bytes.fromhex(g["owner"]))
                  for record, _ in found]
    assert {o.label for o in opened} == {x["label"] for x in g["granted"]}
    with Drive(locations[0]) as primary, Drive(locations[1]) as backup:
        fs = GranteeFS(ReplicaSet([primary, backup]), grantee.shares(opened), header.block_size, read_only=True)
        for o in opened:
            docs = fs.lookup(fs.inodes.root, o.label.encode())
            assert fs.read_all(fs.lookup(docs, b"blocks.bin")) == bytes(range(256)) * 40
            moved = fs.lookup(fs.lookup(docs, b"moved"), b"inside.txt")
            assert fs.read_all(moved) == g["reads"]["moved/inside.txt"].encode()


def test_golden_snapshots_read_as_they_were_taken(tmp_path, monkeypatch):
    monkeypatch.delenv("PQCFS_INSECURE_FAST_KDF", raising=False)
    from pqcfs.session.snapshot_mount import open_snapshot
    shutil.copytree(HERE / "v2-snapshots", tmp_path / "v")
    exp = json.loads((tmp_path / "v" / "expected.json").read_text())
    locations = [str(tmp_path / "v" / "primary"), str(tmp_path / "v" / "backup")]
    vault = vault_mod.unlock(locations, Credentials(passphrase=exp["passphrase"].encode()))
    try:
        for label, files in exp["snapshots"].items():
            if label == "live":
                fs = open_tree(vault, read_only=True)
                got = {p: fs.read_all(walk(fs, p)).decode() for p in files}
            else:
                tree, _ = open_snapshot(vault, label)
                got = {p.decode(): tree.read_all(n).decode() for p, n in tree.walk() if p.decode() in files}
            assert got == files, label
        report = fsck.run(vault)
        assert report.clean and report.snapshot_versions >= 5
    finally:
        vault.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_vault_made_before_snapshots_takes_them(version, tmp_path, monkeypatch):
    """Snapshots need nothing of a vault but format 2: an older one (upgraded from format 1
    when it is one) takes them, and keeps what changes after."""
    monkeypatch.delenv("PQCFS_INSECURE_FAST_KDF", raising=False)
    from tests.api.test_snapshots import Open, snapshot_files
    root = tmp_path / version
    shutil.copytree(HERE / version, root)
    exp = json.loads((root / "expected.json").read_text())
    locations = [str(root / "primary"), str(root / "backup")]
    if version == "v1":
        # Each slot gets its key commitment when it opens (the upgrade test above says more).
        vault = vault_mod.unlock(locations, Credentials(passphrase=exp["passphrase"].encode()))
        with pytest.raises(PqcfsError):
            upgrade.upgrade(vault)
        vault.close()
        vault = vault_mod.unlock(locations, Credentials(recovery_code=slots.parse_recovery_code(exp["recovery_code"])))
        upgrade.upgrade(vault)
        vault.close()
    monkeypatch.setattr("tests.api.test_incremental_sync.PASSPHRASE", exp["passphrase"].encode())
    with Open(locations, tmp_path) as v:
        v.history.create(v.vfs, label="first")
        v.put("hello.txt", b"overwritten")
    assert snapshot_files(locations, "first")["hello.txt"] == b"Hello, golden vault!\n"
