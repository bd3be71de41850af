"""The feature cache's digest index (cache.FeatureCache): where each cached digest's row is, in NumPy arrays.

Every digest of every shard as one fixed-width byte string, sorted once, beside the shard number and row of each
(int32): 24 bytes a row for headstart's 32-character hexadecimal digests, where a dictionary of Python strings
and tuples took about 100. Look-ups are binary searches (`np.searchsorted`) a chunk of digests at a time, so a
query of millions never builds a Python object per digest.

Keys are exact, not hashed: where every cached digest is lowercase hexadecimal of one even length, each is
packed into its bytes (`bytes.fromhex`, one to one on such strings; a digest of any other form cannot be cached
and is simply not found); otherwise each is its UTF-8 bytes followed by b"\\x01", so that NumPy's padding of short
byte strings with NULs cannot make two digests equal. As the dictionary did, the last shard in name order (the
last row, within a shard) wins where a digest is cached twice.
"""

from __future__ import annotations

import numpy as np

# Digests encoded and searched per step of a look-up: its temporaries stay a few MiB whatever the query's size.
LOOKUP_CHUNK = 1 << 16

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _packed_hex(digests: list[str], length: int) -> np.ndarray | None:
    """Lowercase hexadecimal digests of `length` characters as their bytes (S<length/2>); None if any is not."""
    if not digests:
        return np.zeros(0, dtype=f"S{length // 2}")
    joined = "".join(digests)
    if len(joined) != length * len(digests) or any(len(d) != length for d in digests):
        return None
    try:
        packed = bytes.fromhex(joined)
    except ValueError:
        return None
    if packed.hex() != joined:  # upper case, or spaces fromhex skips
        return None
    return np.frombuffer(packed, dtype=f"S{length // 2}")


def _text(digests: list[str]) -> np.ndarray:
    """Any digests as their UTF-8 bytes and a closing b'\\x01' (a trailing NUL stays significant)."""
    return np.array([d.encode("utf-8", "surrogatepass") + b"\x01" for d in digests], dtype=bytes)


def _hex_as_text(packed: np.ndarray) -> np.ndarray:
    """Packed hexadecimal keys re-encoded as _text would have encoded their digests."""
    width = packed.dtype.itemsize
    raw = np.ascontiguousarray(packed).view(np.uint8).reshape(-1, width)
    out = np.empty((len(raw), 2 * width + 1), dtype=np.uint8)
    out[:, 0:2 * width:2] = _HEX[raw >> 4]
    out[:, 1:2 * width:2] = _HEX[raw & 15]
    out[:, -1] = 1
    return out.view(f"S{2 * width + 1}").ravel()


class DigestIndex:
    """Sorted keys, and per key its shard's number (in `paths` / `shards`) and its row there."""

    def __init__(self, paths: list[str], shards: list[np.ndarray]) -> None:
        self.paths, self.shards = paths, shards
        self.hex_length: int | None = None  # the digests' length where keys are packed hexadecimal, else None
        self.keys = np.zeros(0, dtype="S1")
        self.shard = np.zeros(0, dtype=np.int32)
        self.row = np.zeros(0, dtype=np.int32)
        self.first_shard = -1  # the shard whose width `dim` reports (the dictionary's first entry's)

    @classmethod
    def build(cls, shards: list[tuple[str, np.ndarray, list[str]]]) -> DigestIndex:
        """From (path, memory-mapped rows, digests) per shard, in the order their entries override (last wins).
        Each shard's digest list is encoded as it comes, so only one shard's Python strings are held at once
        (the caller's iterator may read them lazily)."""
        paths: list[str] = []
        arrays: list[np.ndarray] = []
        parts: list[np.ndarray] = []
        hex_length: int | None = None
        packing = True
        for path, rows, digests in shards:
            if packing and digests:
                if hex_length is None and len(digests[0]) % 2 == 0 and digests[0]:
                    hex_length = len(digests[0])
                packed = _packed_hex(digests, hex_length) if hex_length else None
                if packed is None:  # not all one form: every key as text, those packed so far re-encoded
                    packing = False
                    parts = [_hex_as_text(p) for p in parts]
            keys = (packed if packing else _text(digests)) if digests else np.zeros(0, dtype="S1")
            paths.append(path)
            arrays.append(rows)
            parts.append(keys)
        index = cls(paths, arrays)
        if not parts or not sum(len(p) for p in parts):
            return index
        counts = [len(p) for p in parts]
        keys = np.concatenate([p for p in parts if len(p)])
        del parts
        shard = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        row = np.concatenate([np.arange(c, dtype=np.int32) for c in counts])
        order = np.argsort(keys, kind="stable")  # equal keys keep their shard order: the last one wins
        first_key = keys[0]
        keys = keys[order]
        last = np.ones(len(keys), dtype=bool)
        last[:-1] = keys[1:] != keys[:-1]
        order = order[last]
        index.keys, index.shard, index.row = keys[last], shard[order], row[order]
        index.hex_length = hex_length if packing else None
        index.first_shard = int(index.shard[np.searchsorted(index.keys, first_key)])
        return index

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.shard.nbytes + self.row.nbytes

    @property
    def dim(self) -> int:
        return self.shards[self.first_shard].shape[1] if len(self) else 0

    def _encode(self, digests: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Query digests as keys of the index's width, and which could be in it at all."""
        width = self.keys.dtype.itemsize
        if self.hex_length is not None:
            packed = _packed_hex(digests, self.hex_length)
            if packed is not None:
                return packed, np.ones(len(digests), dtype=bool)
            one = [_packed_hex([d], self.hex_length) for d in digests]
            ok = np.array([p is not None for p in one], dtype=bool)
            return np.array([p[0] if p is not None else b"" for p in one], dtype=self.keys.dtype), ok
        encoded = _text(digests)
        ok = np.char.str_len(encoded) <= width if len(encoded) else np.zeros(0, dtype=bool)
        return encoded.astype(self.keys.dtype), ok  # too long to be cached: cut here, and masked out

    def lookup(self, digests: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, shard numbers, rows) in the digests' order, the last two for the digests found."""
        found = np.zeros(len(digests), dtype=bool)
        shards, rows = [np.zeros(0, dtype=np.int32)], [np.zeros(0, dtype=np.int32)]
        if not len(self):
            return found, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32)
        for start in range(0, len(digests), LOOKUP_CHUNK):
            query, ok = self._encode(list(digests[start:start + LOOKUP_CHUNK]))
            at = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
            hit = ok & (self.keys[at] == query)
            found[start:start + len(query)] = hit
            shards.append(self.shard[at[hit]])
            rows.append(self.row[at[hit]])
        return found, np.concatenate(shards), np.concatenate(rows)

    def digests(self) -> list[str]:
        """Every digest cached, once each (sorted by key, not by shard)."""
        keys = _hex_as_text(self.keys) if self.hex_length is not None else self.keys  # packed: trailing NULs count
        return [k[:-1].decode("utf-8", "surrogatepass") for k in keys.tolist()]
