"""Make the golden vault of the current format version (run once per format version).

    .venv/bin/python tests/golden/make_golden.py tests/golden/v2
    .venv/bin/python tests/golden/make_golden.py tests/golden/v2-grants --grants
    .venv/bin/python tests/golden/make_golden.py tests/golden/v2-snapshots --snapshots

(--grants: the same vault plus two grants of `docs` to a golden identity, whose file and
passphrase are checked in too. --snapshots: plus two snapshots (snapshot format 1), with a
file overwritten and one deleted after the first, so each holds kept versions.)

The result is checked in with its passphrase and recovery code (expected.json) and must
open with every later version of pqcfs (tests/golden/test_golden.py).
"""

from __future__ import annotations

import json
import os
import stat
import sys

from pqcfs.fs.trees import open_tree
from pqcfs import sharing
from pqcfs import vault as vault_mod
from pqcfs.crypto.kdf import FLOOR, SALT_LEN, Argon2Params
from pqcfs.format import grants, slots
from pqcfs.format import identity as identity_fmt
from pqcfs.format.identity import Identity
from pqcfs.fs.vaultfs import Caller, FsError

PASSPHRASE = "golden vault passphrase v1"
ME = Caller(uid=1000, gid=1000)
LONG = "Länger Name " * 16  # 209 bytes in UTF-8: a long name


IDENTITY_PASSPHRASE = "golden identity passphrase v1"


def add_grants(out: str, vault, expected: dict) -> None:
    """Two grants of docs/ to one identity: read-only with an expiry far ahead, and
    read-write without one."""
    kdf = Argon2Params(FLOOR["memory_kib"], FLOOR["iterations"], FLOOR["lanes"], os.urandom(SALT_LEN))
    ident = Identity.generate()
    with open(os.path.join(out, "identity.json"), "wb") as f:
        f.write(identity_fmt.encode_file(ident, IDENTITY_PASSPHRASE.encode(), kdf))
    made = []
    for label, read_only, expires in (("golden docs", True, 4_102_444_800), ("docs, writable", False, 0)):
        grant = sharing.share(vault, "docs", ident.public, read_only=read_only, label=label, expires=expires)
        made.append({"id": grant.grant_id.hex(), "label": label, "read_only": read_only, "expires": expires,
                     "path": "/docs"})
    expected["grants"] = {"identity": "identity.json", "passphrase": IDENTITY_PASSPHRASE,
                          "recipient": ident.public.fingerprint,
                          "owner": grants.fingerprint(grants.owner_public(vault.root_key)).hex(),
                          "granted": made, "reads": {"blocks.bin": "pattern", "moved/inside.txt": "moved with its key\n"}}


def add_snapshots(fs, vault, expected: dict) -> None:
    """Snapshot "golden-1" of diary.txt (first entry) and old.txt; then diary.txt is
    overwritten and old.txt deleted; snapshot "golden-2"; then diary.txt again."""
    from pqcfs.snapshots.history import History
    from pqcfs.snapshots.store import SnapshotStore
    store = SnapshotStore(vault.drives, vault.header.vault_id, vault.root_key)
    history = History(store, vault.header.vault_id, vault.root_key)
    history.attach(fs.replicas)
    fs.history = history
    root = fs.inodes.root

    def put(name: bytes, data: bytes) -> None:
        try:
            node = fs.lookup(root, name)
        except FsError:
            node = fs.create_file(root, name, stat.S_IFREG | 0o644, ME)
        fs.inodes.remember(node)
        handle = fs.open(node, True)
        handle.truncate(0)
        handle.write(0, data)
        fs.release(node)
    put(b"diary.txt", b"first entry\n")
    put(b"old.txt", b"deleted after the first snapshot\n")
    history.create(fs, label="golden-1")
    put(b"diary.txt", b"second entry\n")
    fs.unlink(root, b"old.txt")
    history.create(fs, label="golden-2")
    put(b"diary.txt", b"third entry\n")
    fs.settle()
    expected["snapshots"] = {
        "golden-1": {"diary.txt": "first entry\n", "old.txt": "deleted after the first snapshot\n",
                     "hello.txt": "Hello, golden vault!\n"},
        "golden-2": {"diary.txt": "second entry\n", "hello.txt": "Hello, golden vault!\n"},
        "live": {"diary.txt": "third entry\n"}}


def main(out: str, with_grants: bool = False, with_snapshots: bool = False) -> None:
    primary, backup = os.path.join(out, "primary"), os.path.join(out, "backup")
    os.makedirs(primary)
    os.makedirs(backup)
    # The floor parameters: a real Argon2id, cheap enough for every test run.
    kdf = Argon2Params(FLOOR["memory_kib"], FLOOR["iterations"], FLOOR["lanes"], os.urandom(SALT_LEN))
    vault, code = vault_mod.create([primary, backup], passphrase=PASSPHRASE.encode(), kdf=kdf)
    fs = open_tree(vault)
    root = fs.inodes.root
    fs.create_file(root, b"hello.txt", stat.S_IFREG | 0o644, ME, content=b"Hello, golden vault!\n")
    blocks = bytes(range(256)) * 40  # 10,240 bytes: two full blocks and a short one
    docs = fs.mkdir(root, b"docs", 0o750, ME)
    fs.create_file(docs, b"blocks.bin", stat.S_IFREG | 0o600, ME, content=blocks)
    fs.create_file(docs, LONG.encode(), stat.S_IFREG | 0o644, ME, content=b"long name\n")
    fs.create_file(root, b"link", stat.S_IFLNK | 0o777, ME, content=b"docs/blocks.bin")
    fs.create_file(root, b"fifo", stat.S_IFIFO | 0o640, ME)
    sparse = fs.create_file(root, b"sparse", stat.S_IFREG | 0o644, ME)
    handle = fs.open(sparse, True)
    handle.write(1_000_000, b"end")
    fs.release(sparse)
    fs.set_xattr(fs.lookup(root, b"hello.txt"), b"user.colour", b"blue")
    moved = fs.mkdir(root, b"to-move", 0o755, ME)
    fs.create_file(moved, b"inside.txt", stat.S_IFREG | 0o644, ME, content=b"moved with its key\n")
    fs.rename(root, b"to-move", docs, b"moved")  # leaves an override in docs/d.ov
    fs.link(fs.lookup(root, b"hello.txt"), docs, b"hello-link.txt")  # a hard link: h.links/
    times = {}
    if vault.tables:   # format 2 keeps nanosecond times itself
        fs.set_times(fs.lookup(docs, b"blocks.bin"), 1_000_000_001, 978_307_200_123_456_789)
        times = {"docs/blocks.bin": [1_000_000_001, 978_307_200_123_456_789]}
    expected = {
        "format": vault.header.version, "times": times, "passphrase": PASSPHRASE, "recovery_code": slots.format_recovery_code(code),
        "files": {"hello.txt": "Hello, golden vault!\n", "docs/moved/inside.txt": "moved with its key\n",
                  "docs/hello-link.txt": "Hello, golden vault!\n",
                  f"docs/{LONG}": "long name\n"},
        "blocks.bin": {"path": "docs/blocks.bin", "pattern": "bytes(range(256)) * 40"},
        "symlink": {"link": "docs/blocks.bin"}, "fifo": "fifo",
        "sparse": {"path": "sparse", "size": 1_000_003, "tail": "end"},
        "xattrs": {"hello.txt": {"user.colour": "blue"}, "docs/hello-link.txt": {"user.colour": "blue"}},
        "hard_links": [["hello.txt", "docs/hello-link.txt"]],
        "modes": {"docs": 0o750, "docs/blocks.bin": 0o600, "fifo": 0o640}, "uid": 1000, "gid": 1000}
    if with_grants:
        add_grants(out, vault, expected)
    if with_snapshots:
        add_snapshots(fs, vault, expected)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], with_grants="--grants" in sys.argv[2:], with_snapshots="--snapshots" in sys.argv[2:])
