"""File content blocks: AES-256-GCM, each block bound to (file id, index, end-of-file).

c_block = nonce(12) || ciphertext(len p_block) || tag(16)
aad     = file_id(16) || u64be(block index) || u8(1 if last block of the file else 0)

Binding the end-of-file flag makes truncation at a block boundary detectable: the new last
block was sealed with flag 0 and fails to open with flag 1. An all-zero ciphertext block of
full size reads as a hole (zeros), like gocryptfs, so sparse files stay sparse.
"""

from __future__ import annotations

import functools
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pqcfs.crypto.aead import NONCE_LEN, OVERHEAD, TAG_LEN as aead_tag_len
from pqcfs.errors import CryptoError

_AAD = struct.Struct(">16sQB")
_ZERO_NONCE = bytes(NONCE_LEN)


@functools.lru_cache(maxsize=4)
def _zero_block(size: int) -> bytes:
    # One per block size for the whole process, not one per file (a cached file node
    # holding its own 4 KiB of zeros was most of the daemon's memory per file).
    return bytes(size)


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
        self._zero_c_block = _zero_block(self.c_block)

    def _aad(self, index: int, eof: bool) -> bytes:
        return _AAD.pack(self.file_id, index, eof)

    # The two loops below run once per 4 KiB block on the read/write path: locals are
    # hoisted, and each block is sealed or opened straight into the caller's buffer. A
    # megabyte request made 256 block objects and their join before: two megabytes at
    # once instead of one, a megabyte of the daemon's peak memory (not of its speed).
    def sealed_len(self, p_len: int) -> int:
        """What seal makes of p_len bytes (at least one block: an empty one is a tag)."""
        full, rest = divmod(p_len, self.p_block)
        return full * self.c_block + (rest + OVERHEAD if rest or not full else 0)

    def seal_into(self, first_index: int, p_data: bytes | memoryview, eof_at_end: bool, out) -> int:
        """Seal p_data as consecutive blocks from first_index into the writable buffer out
        (sealed_len bytes of it are written; returns that length); only the final block
        may be short, and it carries the end-of-file flag when eof_at_end is set."""
        p_view, o = memoryview(p_data), memoryview(out)
        B = self.p_block
        count = max(1, -(-len(p_view) // B))
        nonces = os.urandom(NONCE_LEN * count)  # one syscall for the whole request
        encrypt_into, pack, file_id = self._aead.encrypt_into, _AAD.pack, self.file_id
        last, pos = count - 1, 0
        for k in range(count):
            chunk = p_view[k * B : (k + 1) * B]
            body = pos + NONCE_LEN
            o[pos:body] = nonces[k * NONCE_LEN : (k + 1) * NONCE_LEN]
            pos = body + encrypt_into(o[pos:body], chunk, pack(file_id, first_index + k, eof_at_end and k == last),
                                      o[body : body + len(chunk) + aead_tag_len])
        return pos

    def seal(self, first_index: int, p_data: bytes | memoryview, eof_at_end: bool) -> bytearray:
        """As seal_into, into a new buffer (the caller's: not copied again into bytes)."""
        out = bytearray(self.sealed_len(len(p_data)))
        self.seal_into(first_index, p_data, eof_at_end, out)
        return out

    def opened_len(self, c_len: int) -> int:
        """The plaintext length of c_len bytes of consecutive blocks (as open reads them)."""
        full, rest = divmod(c_len, self.c_block)
        return full * self.p_block + max(rest - OVERHEAD, 0)

    def open_into(self, first_index: int, c_data: bytes | memoryview, last_index: int, out) -> int:
        """Open consecutive ciphertext blocks into the writable buffer out (opened_len
        bytes of it); last_index is the file's final block. Returns that length."""
        C, B = self.c_block, self.p_block
        decrypt_into, pack, file_id = self._aead.decrypt_into, _AAD.pack, self.file_id
        c_view, o = memoryview(c_data), memoryview(out)
        index, pos = first_index, 0
        for start in range(0, len(c_view), C):
            nonce = c_view[start : start + NONCE_LEN]
            chunk = c_view[start + NONCE_LEN : start + C]
            if len(chunk) <= aead_tag_len:
                raise BlockCorrupt(index)
            size = len(chunk) - aead_tag_len
            # A hole: a whole block of zeros (a real nonce is never all zero in practice,
            # so the cheap nonce test keeps the full comparison off the common path).
            if nonce == _ZERO_NONCE and index != last_index and c_view[start : start + C] == self._zero_c_block:
                o[pos : pos + B] = _zero_block(B)
            else:
                try:
                    decrypt_into(nonce, chunk, pack(file_id, index, index == last_index), o[pos : pos + size])
                except InvalidTag:
                    raise BlockCorrupt(index) from None
            pos += size
            index += 1
        return pos

    def open(self, first_index: int, c_data: bytes | memoryview, last_index: int) -> bytes | bytearray:
        """Open consecutive ciphertext blocks into a new buffer (the caller's: not copied
        again into bytes); last_index is the file's final block."""
        if len(c_data) <= self.c_block:
            return self._open_one(first_index, c_data, last_index)
        out = bytearray(self.opened_len(len(c_data)))
        self.open_into(first_index, c_data, last_index, out)
        return out

    def _open_one(self, index: int, c_data: bytes | memoryview, last_index: int) -> bytes:
        """open of a single block (every random 4 KiB read): open_into's rules, without
        its loop and buffer views."""
        if len(c_data) <= OVERHEAD:
            raise BlockCorrupt(index)
        view = memoryview(c_data)
        nonce = view[:NONCE_LEN]
        if nonce == _ZERO_NONCE and index != last_index and c_data == self._zero_c_block:
            return _zero_block(self.p_block)
        try:
            return self._aead.decrypt(nonce, view[NONCE_LEN:], _AAD.pack(self.file_id, index, index == last_index))
        except InvalidTag:
            raise BlockCorrupt(index) from None

    def reseal_stale_final(self, index: int, slot: bytes) -> bytes | None:
        """A file that grew past its last block writes the new blocks first and then
        reseals the old last block without its end-of-file flag; a crash between the two
        leaves that block, still sealed as final, in the middle of the file. `slot` is the
        C bytes where block index sits: its start is that final block's ciphertext (of
        unknown length), the rest the zeros of the hole after it. When it authenticates as
        a final block, return it resealed as the middle block it had become (its
        plaintext followed by zeros, as the extending write defines), else None."""
        B = self.p_block
        end = len(bytes(slot).rstrip(b"\0"))
        # The ciphertext ends where the zeros begin, unless its own last bytes are zero.
        for length in list(range(end, min(end + 32, len(slot)) + 1)) + list(range(OVERHEAD + 1, end)):
            if length <= OVERHEAD or length > len(slot):
                continue
            try:
                plain = self._aead.decrypt(slot[:NONCE_LEN], slot[NONCE_LEN:length], self._aad(index, True))
            except InvalidTag:
                continue
            return self.seal(index, plain.ljust(B, b"\0"), eof_at_end=False)
        return None

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
