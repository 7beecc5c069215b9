"""Sharing: grants in the vault header, for the owner and for the recipient.

Policy over the pure grant format (format/grants.py). The vault header's `grants` list
holds one record per grant, authenticated with the rest of the header by the root key:

  {"id": hex grant id, "node": hex node id, "generation": N,
   "blob": base64url(grant), "locator": [disk names from tree/ down to the subtree],
   "to": the recipient's public key (a revoke of another grant re-wraps this one to it),
   "note": hex(AES-GCM(HKDF(root_key, "pqcfs grant note v1"), JSON {"label"}, aad = grant id))}

and, once revoked, only {"id", "node", "generation", "revoked": Unix seconds}: the
generation stays known, so a later share of the same directory never reuses a key.

The locator is a hint (the recipient cannot check the header's MAC): the subtree is the
directory whose `d.id` names the granted node id and opens under the granted key, found
where the hint points or, when an ancestor was renamed since, by scanning the `d.id`
prefixes of the tree (node ids are in the clear there). `pqcfs grants` refreshes hints.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import stat
import time
from collections import deque
from dataclasses import dataclass

from pqcfs.crypto import aead
from pqcfs.crypto.kdf import LABEL_GRANT_NOTE, hkdf
from pqcfs.crypto.keys import NodeKeys
from pqcfs.errors import CryptoError, DamagedStructure, GrantRefused, NoSuchPath, PqcfsError
from pqcfs.format import grants, names, node_header
from pqcfs.format.identity import Identity, PublicIdentity
from pqcfs.fs.common import FsError
from pqcfs.fs.trees import open_tree
from pqcfs.store import seen
from pqcfs.store.drive import Drive
from pqcfs.store.replicas import TREE_DIR

NOTE_AD = b"pqcfs grant note v1"
SCAN_LIMIT = 1_000_000   # directories a locator scan visits at most (a hostile tree is bounded)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError, TypeError):
        raise DamagedStructure("grant record is not base64") from None


def generation(records: list[dict], node_id: bytes) -> int:
    """The subtree key generation of a directory now (0: its key was never replaced)."""
    return max((r["generation"] for r in records if r["node"] == node_id.hex()), default=0)


def note_key(root_key: bytes) -> bytes:
    return hkdf(root_key, LABEL_GRANT_NOTE)


def _seal_note(root_key: bytes, grant_id: bytes, note: dict) -> str:
    return aead.seal(note_key(root_key), json.dumps(note).encode(), NOTE_AD + grant_id).hex()


def open_note(root_key: bytes, record: dict) -> dict:
    try:
        raw = aead.open_sealed(note_key(root_key), bytes.fromhex(record["note"]),
                               NOTE_AD + bytes.fromhex(record["id"]))
        note = json.loads(raw)
        return note if isinstance(note, dict) else {}
    except (CryptoError, ValueError):
        return {}


# --- the owner's side ---------------------------------------------------------------


def owner_tree(vault):
    """The vault's file system, read-only, with directory tables (format 2)."""
    if not vault.tables:
        raise PqcfsError("sharing needs format 2 (directory tables); run `pqcfs upgrade` first")
    return open_tree(vault, read_only=True)


def resolve(vfs, p_path: str):
    """The node at p_path (a path inside the vault, '/' for its root)."""
    node = vfs.inodes.root
    for part in [p for p in p_path.split("/") if p and p != "."]:
        if part == "..":
            raise NoSuchPath(f"{p_path}: '..' is not allowed in a vault path")
        try:
            node = vfs.lookup(node, part.encode())
        except FsError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                raise NoSuchPath(f"{p_path}: no such directory in the vault") from None
            raise
    return node


def find_dir(vfs, node_id: bytes):
    """The directory with node_id, wherever it is now (None: gone)."""
    queue = deque([vfs.inodes.root])
    while queue:
        dir_node = queue.popleft()
        if dir_node.keys.node_id == node_id:
            return dir_node
        for p_name, entry in list(vfs.table_of(dir_node).by_name.items()):
            if stat.S_ISDIR(entry.mode):
                try:
                    queue.append(vfs.lookup(dir_node, p_name))
                except (FsError, PqcfsError):
                    continue
    return None


def find_granted(vfs, record: dict):
    """A grant's directory in the owner's tree: where its locator points when the node
    there is the grant's, else found by walking the tree (find_dir). None: gone."""
    node_id = bytes.fromhex(record["node"])
    node = vfs.inodes.root
    try:
        for disk_name in record.get("locator") or []:
            entry = vfs.table_of(node).entries.get(disk_name)
            if entry is None or not stat.S_ISDIR(entry.mode):
                node = None
                break
            node = vfs.lookup(node, entry.p_name)
    except (FsError, PqcfsError, OSError):
        node = None
    if node is not None and node.keys.node_id == node_id:
        return node
    return find_dir(vfs, node_id)


def p_path(node) -> str:
    """The path of a node as the owner sees it (for people: undecodable bytes replaced)."""
    parts = []
    while node.parent is not None:
        parts.append(node.p_name.decode("utf-8", "replace"))
        node = node.parent
    return "/" + "/".join(reversed(parts))


def locator(node) -> list[str]:
    return node.c_path.split("/")


def share(vault, p_path: str, recipient: PublicIdentity, *, read_only: bool, label: str | None = None,
          expires: int = 0) -> grants.Grant:
    """Grant the directory at p_path to recipient; the record goes into the header on
    every replica."""
    vfs = owner_tree(vault)
    node = resolve(vfs, p_path)
    if not node.is_dir:
        raise NoSuchPath(f"{p_path}: not a directory (share the directory that holds it)")
    if node is vfs.inodes.root:
        raise PqcfsError("the vault's root is not shared with a grant: give the whole vault with "
                         "`pqcfs keys add VAULT --public-key BOB.pub`")
    if expires and expires <= time.time():
        raise PqcfsError("the expiry date is in the past")
    records = vault.header.grants
    if sum(1 for r in records if "blob" in r) >= grants.MAX_GRANTS:
        raise PqcfsError(f"the vault has {grants.MAX_GRANTS} grants, the most it can hold; revoke some first")
    label = label or node.p_name.decode("utf-8", errors="replace")
    grant, blob = grants.issue(vault.root_key, vault_id=vault.header.vault_id, node_id=node.keys.node_id,
                               subtree_key=node.keys.key, generation=generation(records, node.keys.node_id),
                               recipient=recipient, rights=grants.READ if read_only else grants.READ_WRITE,
                               label=label, expires=expires)
    records.append({"id": grant.grant_id.hex(), "node": node.keys.node_id.hex(), "generation": grant.generation,
                    "blob": b64(blob), "locator": locator(node), "to": recipient.encode(),
                    "note": _seal_note(vault.root_key, grant.grant_id, {"label": label})})
    vault.save_header()
    return grant


def revoke_resurrected(vault, writable: bool) -> list[str]:
    """Grants the header lists as live that this machine saw revoked: the drives hold an
    older copy of the header (rolled back). They are made tombstones again (when the
    command may write); their keys open nothing any more either way (the revoke re-keyed
    the directory)."""
    gone = seen.revoked(vault.header.vault_id, vault.root_key)
    back = [r for r in vault.header.grants if "blob" in r and r["id"] in gone]
    if back and writable:
        for record in back:
            vault.header.grants[vault.header.grants.index(record)] = {
                "id": record["id"], "node": record["node"], "generation": record["generation"] + 1,
                "revoked": int(time.time())}
        vault.save_header()
    return [r["id"] for r in back]


@dataclass
class GrantView:
    grant_id: str
    path: str | None
    label: str
    recipient: str
    rights: str
    expires: int
    created: int
    generation: int
    revoked: int | None = None

    def as_dict(self) -> dict:
        return {"id": self.grant_id, "path": self.path, "label": self.label, "recipient": self.recipient,
                "rights": self.rights, "expires": self.expires or None, "created": self.created,
                "generation": self.generation, "revoked": self.revoked}


def list_grants(vault, refresh: bool = True) -> list[GrantView]:
    """Every grant, with the path of its directory as the owner sees it now; stale
    locators are brought up to date when refresh (the header is rewritten once)."""
    vfs = owner_tree(vault)
    views, changed = [], False
    owner = grants.fingerprint(grants.owner_public(vault.root_key))
    for record in vault.header.grants:
        if "revoked" in record:
            continue
        parsed = grants.verify(unb64(record["blob"]), vault.header.vault_id, owner)
        g = parsed.grant
        node = find_dir(vfs, g.node_id)
        if node is not None and refresh and locator(node) != record["locator"]:
            record["locator"], changed = locator(node), True
        views.append(GrantView(g.grant_id.hex(), p_path(node) if node is not None else None, open_note(vault.root_key, record).get("label", "?"),
                               g.recipient.hex(), grants.RIGHTS[g.rights], g.expires, g.created, g.generation))
    if changed:
        vault.save_header()
    return views


def recipient_of(record: dict) -> PublicIdentity:
    public = PublicIdentity.decode(record["to"])
    if public.fingerprint != grants.parse(unb64(record["blob"])).grant.recipient.hex():
        raise DamagedStructure(f"grant {record['id']} names another recipient than its key")
    return public


# --- the recipient's side -----------------------------------------------------------


@dataclass
class Opened:
    """A grant opened by its recipient: where the subtree is and its key."""
    grant: grants.Grant
    label: str
    keys: NodeKeys
    c_path: str          # the subtree's ciphertext directory, relative to tree/


def grants_for(records: list[dict], recipient: PublicIdentity) -> list[tuple[dict, grants.Parsed]]:
    """Every grant in records that names this recipient (signatures not yet checked)."""
    mine = bytes.fromhex(recipient.fingerprint)
    found = []
    for record in records:
        if "blob" not in record:
            continue
        try:
            parsed = grants.parse(unb64(record["blob"]))
        except PqcfsError:
            continue
        if parsed.grant.recipient == mine:
            found.append((record, parsed))
    return found


def open_grant(drive: Drive, record: dict, vault_id: bytes, identity: Identity, owner: bytes | None) -> Opened:
    if "rekey" in record:
        # A revoke of it was cut short: what the grant's key opens is about to be deleted.
        raise GrantRefused(f"grant {record['id']} is being revoked")
    parsed = grants.verify(unb64(record["blob"]), vault_id, owner)
    key, label = grants.open_key(parsed, identity)
    keys = NodeKeys(parsed.grant.node_id, key)
    c_path = locate(drive, keys, record["locator"])
    opened = Opened(parsed.grant, label, keys, c_path)
    try:
        grants.check_time(parsed.grant)
    except GrantRefused as e:
        e.opened = opened     # the key opened: the refusal can go into the grant's own log
        raise
    return opened


def _names_node(drive: Drive, c_path: str, node_id: bytes) -> bool:
    try:
        data = drive.read(f"{TREE_DIR}/{c_path}/{names.DIR_ID_NAME}" if c_path else
                          f"{TREE_DIR}/{names.DIR_ID_NAME}", node_header.HEADER_LEN)
        return node_header.parse_prefix(data, node_header.MAGIC_DIR) == node_id
    except (OSError, PqcfsError):
        return False


def locate(drive: Drive, keys: NodeKeys, hint: list[str]) -> str:
    """The ciphertext directory of the subtree: where the hint points if its d.id names
    the node, else wherever a scan finds it; either way it must open under the key."""
    c_path = None
    if hint and all(n and names.is_entry(n) and "/" not in n for n in hint) and _names_node(drive, "/".join(hint),
                                                                                      keys.node_id):
        c_path = "/".join(hint)
    else:
        c_path = _scan(drive, keys.node_id)
    if c_path is None:
        raise GrantRefused("the granted directory is not on this drive (deleted, or re-keyed when a grant of "
                           "it was revoked)")
    data = drive.read(f"{TREE_DIR}/{c_path}/{names.DIR_ID_NAME}", node_header.HEADER_LEN)
    try:
        node_header.open_meta(keys.meta_key, data)
    except CryptoError:
        raise GrantRefused("the grant's key no longer opens its directory (revoked and re-keyed)") from None
    return c_path


def _scan(drive: Drive, node_id: bytes) -> str | None:
    queue, visited = deque([""]), 0
    while queue and visited < SCAN_LIMIT:
        c_path = queue.popleft()
        visited += 1
        try:
            entries = drive.scandir(f"{TREE_DIR}/{c_path}" if c_path else TREE_DIR)
        except (OSError, PqcfsError):
            continue
        for name, kind in entries:
            if kind != "dir" or not names.is_entry(name):
                continue
            sub = f"{c_path}/{name}" if c_path else name
            if _names_node(drive, sub, node_id):
                return sub
            queue.append(sub)
    return None


def tree_size(vfs, dir_node) -> tuple[int, int]:
    """Bytes and files below dir_node (for progress bars); iterative, so a tree of any
    depth is measured."""
    size = files = 0
    stack = [dir_node]
    while stack:
        here = stack.pop()
        for p_name, _ in vfs.listdir(here):
            node = vfs.lookup(here, p_name)
            if node.is_dir:
                stack.append(node)
            else:
                size, files = size + node.size, files + 1
    return size, files
