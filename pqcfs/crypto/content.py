"""File content blocks: AES-256-GCM, each block bound to (file id, index, end-of-file).

c_block = nonce(12) || ciphertext(len p_block) || tag(16)
aad     = file_id(16) || u64be(block index) || u8(1 if last block of the file else 0)

Binding the end-of-file flag makes truncation at a block boundary detectable: the new last
block was sealed with flag 0 and fails to open with flag 1. An all-zero ciphertext block of
full size reads as a hole (zeros), like gocryptfs, so sparse files stay sparse.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pqcfs.crypto.aead import NONCE_LEN, OVERHEAD
from pqcfs.errors import CryptoError

_INDEX = struct.Struct(">QB")


class BlockCorrupt(CryptoError):
    def __init__(self, index: int):
        super().__init__(f"content block {index} failed authentication")
        self.index = index


class ContentCipher:
    def __init__(self, content_key: bytes, file_id: bytes, block_size: int):
        self._aead = AESGCM(content_key)
        self.file_id = file_id
        self.p_block = block_size
        self.c_block = block_size + OVERHEAD
        self._zero_c_block = bytes(self.c_block)

    def _aad(self, index: int, eof: bool) -> bytes:
        return self.file_id + _INDEX.pack(index, eof)

    def seal(self, first_index: int, p_data: bytes | memoryview, eof_at_end: bool) -> bytes:
        """Seal p_data as consecutive blocks from first_index; only the final block may be
        short, and it carries the end-of-file flag when eof_at_end is set."""
        p_view = memoryview(p_data)
        count = max(1, -(-len(p_view) // self.p_block))
        nonces = os.urandom(NONCE_LEN * count)  # one syscall for the whole request
        out = []
        encrypt = self._aead.encrypt
        for k in range(count):
            nonce = nonces[k * NONCE_LEN : (k + 1) * NONCE_LEN]
            chunk = p_view[k * self.p_block : (k + 1) * self.p_block]
            eof = eof_at_end and k == count - 1
            out.append(nonce)
            out.append(encrypt(nonce, chunk, self._aad(first_index + k, eof)))
        return b"".join(out)

    def open(self, first_index: int, c_data: bytes, last_index: int) -> bytes:
        """Open consecutive ciphertext blocks; last_index is the file's final block."""
        out = []
        decrypt = self._aead.decrypt
        c_view = memoryview(c_data)
        for k, start in enumerate(range(0, len(c_view), self.c_block)):
            chunk = c_view[start : start + self.c_block]
            index = first_index + k
            if len(chunk) == self.c_block and chunk == self._zero_c_block and index != last_index:
                out.append(bytes(self.p_block))
                continue
            if len(chunk) <= OVERHEAD:
                raise BlockCorrupt(index)
            try:
                out.append(decrypt(chunk[:NONCE_LEN], chunk[NONCE_LEN:], self._aad(index, index == last_index)))
            except InvalidTag:
                raise BlockCorrupt(index) from None
        return b"".join(out)

    def c_size(self, p_size: int) -> int:
        return c_size(p_size, self.p_block)

    def p_size(self, c_size_: int) -> int:
        return p_size(c_size_, self.p_block)


# Size arithmetic lives here, next to the layout it describes.
def c_size(p_size_: int, p_block: int) -> int:
    full, rest = divmod(p_size_, p_block)
    return full * (p_block + OVERHEAD) + (rest + OVERHEAD if rest else 0)


def p_size(c_size_: int, p_block: int) -> int:
    full, rest = divmod(c_size_, p_block + OVERHEAD)
    if rest and rest <= OVERHEAD:
        raise CryptoError("ciphertext size is not a valid block layout")
    return full * p_block + (rest - OVERHEAD if rest else 0)
