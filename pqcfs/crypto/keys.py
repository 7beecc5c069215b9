"""The node-key tree.

K(root dir) = HMAC-SHA256(root_key, "pqcfs node" || root_dir_id)
K(node)     = HMAC-SHA256(K(parent), "pqcfs node" || node_id)

Node ids are random and stable, so a rename never re-keys anything. A node moved under a
new parent keeps its key through an override: the key wrapped with AES-SIV under the new
parent's wrap key, bound to the parent's id and the node's id.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from pqcfs.crypto import aead
from pqcfs.crypto.kdf import LABEL_CONTENT, LABEL_META, LABEL_NAME, LABEL_NODE, LABEL_WRAP, hkdf

KEY_LEN = 32
NODE_ID_LEN = 16
OVERRIDE_AD = b"pqcfs override v1"


def child_key(parent_key: bytes, node_id: bytes) -> bytes:
    if len(node_id) != NODE_ID_LEN:
        raise ValueError("node id must be 16 bytes")
    return hmac.new(parent_key, LABEL_NODE + node_id, hashlib.sha256).digest()


_UNSET = object()


class NodeKeys:
    """A node's key and the purpose keys derived from it (each computed once, on first
    use). Slotted: a vault of 100,000 cached files holds 100,000 of these. Immutable by
    convention; the repr never shows a key."""

    __slots__ = ("node_id", "key", "_name_key", "_name_siv", "_wrap_key", "_content_key", "_meta_key")

    def __init__(self, node_id: bytes, key: bytes):
        self.node_id, self.key = node_id, key
        self._name_key = self._name_siv = self._wrap_key = self._content_key = self._meta_key = _UNSET

    def __eq__(self, other) -> bool:
        return isinstance(other, NodeKeys) and (self.node_id, self.key) == (other.node_id, other.key)

    def __hash__(self) -> int:
        return hash((self.node_id, self.key))

    def __repr__(self) -> str:
        return f"NodeKeys(node_id={self.node_id.hex()})"

    def forget_derived(self) -> None:
        """Drop the purpose keys (derived again on next use): a closed file's cached node
        need not hold them."""
        self._name_key = self._name_siv = self._wrap_key = self._content_key = self._meta_key = _UNSET

    @property
    def name_key(self) -> bytes:
        if self._name_key is _UNSET:
            self._name_key = hkdf(self.key, LABEL_NAME, 64)
        return self._name_key

    @property
    def name_siv(self) -> AESSIV:
        if self._name_siv is _UNSET:
            self._name_siv = AESSIV(self.name_key)
        return self._name_siv

    @property
    def wrap_key(self) -> bytes:
        if self._wrap_key is _UNSET:
            self._wrap_key = hkdf(self.key, LABEL_WRAP, 64)
        return self._wrap_key

    @property
    def content_key(self) -> bytes:
        if self._content_key is _UNSET:
            self._content_key = hkdf(self.key, LABEL_CONTENT)
        return self._content_key

    @property
    def meta_key(self) -> bytes:
        if self._meta_key is _UNSET:
            self._meta_key = hkdf(self.key, LABEL_META)
        return self._meta_key

    def child(self, node_id: bytes) -> "NodeKeys":
        return NodeKeys(node_id, child_key(self.key, node_id))

    def wrap_override(self, child: "NodeKeys") -> bytes:
        """Wrap a moved child's key so this directory can hand it out."""
        return aead.siv_seal(self.wrap_key, child.key, [OVERRIDE_AD, self.node_id, child.node_id])

    def unwrap_override(self, node_id: bytes, wrapped: bytes) -> "NodeKeys":
        key = aead.siv_open(self.wrap_key, wrapped, [OVERRIDE_AD, self.node_id, node_id])
        return NodeKeys(node_id, key)


def root_dir_keys(root_key: bytes, root_dir_id: bytes) -> NodeKeys:
    return NodeKeys(root_dir_id, child_key(root_key, root_dir_id))
