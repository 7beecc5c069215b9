"""docs/format.md is normative: the numbers it states are the code's constants (versions,
caps, sizes), checked here so that the two cannot drift apart again."""

import pathlib
import re

from pqcfs import grantee_log
from pqcfs.audit import log as audit_log
from pqcfs.format import dir_table, link_attrs, names, node_header, replica_state, vault_header
from pqcfs.fs import tables, vaultfs
from pqcfs.session import grantee_intent
from pqcfs.store import changes, intent

DOC = (pathlib.Path(__file__).parents[2] / "docs" / "format.md").read_text()
UNITS = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20}


def stated(pattern: str) -> int:
    """The size the document states where pattern (with one `(\\d+) (unit)` group pair) matches."""
    found = re.search(pattern, DOC.replace("\n", " "))
    assert found, f"docs/format.md no longer says: {pattern}"
    return int(found.group(1)) * UNITS[found.group(2)]


def test_the_caps_on_what_is_read_from_a_drive():
    assert stated(r"the vault header at (\d+) (MiB) of body") == vault_header.MAX_BODY
    assert stated(r"the replica state at (\d+) (KiB)") == replica_state.MAX_FILE
    assert stated(r"a node header or `d.id` at (\d+) (bytes)") == node_header.HEADER_LEN
    assert stated(r"a long-name sidecar at (\d+) (KiB)") == names.LONG_NAME_CAP
    assert stated(r"a hard-linked file's times record at (\d+) (bytes)") == link_attrs.LENGTH
    assert stated(r"`tree/h.links/<hex\(node_id\)>.a`, (\d+) (bytes)") == link_attrs.LENGTH
    assert stated(r"an xattr or override table at (\d+) (MiB)") == vaultfs.TABLE_CAP
    assert stated(r"the intent log and the change journal at (\d+) (MiB)") == intent.MAX_FILE == changes.MAX_FILE
    assert stated(r"a grantee's intent log and a grantee's audit log at (\d+) (MiB)") == grantee_intent.INTENT_CAP \
        == grantee_log.LOG_CAP
    assert stated(r"a directory table at (\d+) (MiB)") == tables.TABLE_FILE_CAP
    assert stated(r"the audit log at (\d+) (MiB)") == audit_log.MAX_FILE


def test_sizes_and_versions():
    assert stated(r"## Node header \((\d+) (bytes)\)") == node_header.HEADER_LEN
    assert re.search(r"version u16 \(1 or 2\)", DOC) and vault_header.READABLE_VERSIONS == {1, 2}
    assert f"vault header version {vault_header.VERSION}" in DOC
    assert f"directory tables version {dir_table.VERSION}" in DOC
    assert f"the last {replica_state.ReplicaState.LINEAGE_KEPT} sessions" in DOC.replace("\n", " ")
    assert f"`{vault_header.SPARE_NAME}`" in DOC and f"`{vault_header.FILE_NAME}`" in DOC


def test_the_offsite_remote_caps_and_labels():
    from pqcfs.crypto import kdf
    from pqcfs.format import remote
    assert stated(r"an epoch record over (\d+) (KiB)") == remote.EPOCH_CAP
    assert stated(r"a page over (\d+) (MiB)") == remote.PAGE_CAP
    assert "2^46" in DOC and remote.MAX_OBJECT == 1 << 46
    for label in (kdf.LABEL_REMOTE_OBJECT, kdf.LABEL_REMOTE_SEAL, kdf.LABEL_REMOTE_INDEX):
        assert f'"{label.decode()}"' in DOC


def test_the_snapshot_caps_and_labels():
    from pqcfs.format import snapshot
    assert stated(r"no record or wrap over (\d+) (MiB)") == snapshot.RECORD_CAP
    assert f"at most {snapshot.MAX_WRAPS} wraps" in DOC
    assert stated(r"a manifest over (\d+) (MiB)") == snapshot.MANIFEST_CAP
    assert stated(r"an index over (\d+) (KiB)") == snapshot.INDEX_CAP
    from pqcfs.snapshots.history import SMALL
    assert stated(r"a version of at most\s+(\d+) (KiB)") == SMALL
    assert f"over {snapshot.MAX_SNAPSHOTS} snapshots" in DOC.replace("\n", " ")
    for label in (snapshot.HEAD_AD, snapshot.DIR_AD, snapshot.INDEX_AD, snapshot.LOCATOR_INFO, snapshot.RECORD_INFO,
                  snapshot.GRANT_AD, snapshot.GRANT_LOCATOR_INFO, b"pqcfs snapshot v1"):
        assert f'"{label.decode()}"' in DOC
