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
from dataclasses import dataclass
from functools import cached_property

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


@dataclass(frozen=True)
class NodeKeys:
    """A node's key and the purpose keys derived from it (computed once, on demand)."""

    node_id: bytes
    key: bytes

    @cached_property
    def name_key(self) -> bytes:
        return hkdf(self.key, LABEL_NAME, 64)

    @cached_property
    def name_siv(self) -> AESSIV:
        return AESSIV(self.name_key)

    @cached_property
    def wrap_key(self) -> bytes:
        return hkdf(self.key, LABEL_WRAP, 64)

    @cached_property
    def content_key(self) -> bytes:
        return hkdf(self.key, LABEL_CONTENT)

    @cached_property
    def meta_key(self) -> bytes:
        return hkdf(self.key, LABEL_META)

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
