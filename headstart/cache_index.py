"""The feature cache's digest index (cache.FeatureCache): where each cached digest's row is, in one NumPy array.

Each cached row is one fixed-width record: its digest's key, then its position among all cached rows (shards in
name order, rows in order; big-endian, so bytes sort as numbers). The records are sorted in place, once; a
position gives the shard (`ends`) and row. For headstart's 32-character hexadecimal digests a record is 20 bytes,
where a dictionary of Python strings and tuples took about 250, and loading holds nothing larger than the records
and one shard's JSON. Look-ups are binary searches (`np.searchsorted`) a chunk of digests at a time, so a query
of millions never builds a Python object per digest.

Keys are exact, not hashed: where every cached digest is lowercase hexadecimal of one even length, each is
packed into its bytes (`bytes.fromhex`, one to one on such strings; a digest of another form cannot be cached and
is simply not found); otherwise each is its UTF-8 bytes followed by b"\\x01", so that padding short keys with NULs
cannot make two digests equal. As the dictionary did, where a digest is cached twice the last shard in name order
(the last row, within a shard) wins: of the records with one key, a look-up takes the one of highest position.

A shard written after the index was built is merged into it in place (`add`), where rebuilding would read every
shard's JSON again: inference.cached_rows writes a shard per chunk of its inputs, so rebuilding per chunk made its
time quadratic in the rows. An added shard's positions follow every other's (positions need only be unique and
map to a shard and row); where its digests are already cached, the records that a rebuild would not take (the
holder's shard name is later) are left out, so every look-up answers as a rebuild would.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

# Digests encoded and searched per step of a look-up: its temporaries stay a few MiB whatever the query's size.
LOOKUP_CHUNK = 1 << 16
# Records moved per step of a merge (DigestIndex.add): likewise a few MiB of temporaries.
MERGE_CHUNK = 1 << 16

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _packed_hex(digests: list[str], length: int) -> np.ndarray | None:
    """Lowercase hexadecimal digests of `length` characters as their bytes, [n, length/2] uint8; None if any
    is not of that form."""
    if not digests:
        return np.zeros((0, length // 2), dtype=np.uint8)
    joined = "".join(digests)
    if len(joined) != length * len(digests) or any(len(d) != length for d in digests):
        return None
    try:
        packed = bytes.fromhex(joined)
    except ValueError:
        return None
    if packed.hex() != joined:  # upper case, or spaces fromhex skips
        return None
    return np.frombuffer(packed, dtype=np.uint8).reshape(len(digests), length // 2)


def _text(digests: list[str], width: int | None = None) -> np.ndarray:
    """Digests of any form as their UTF-8 bytes and a closing b'\\x01' (a trailing NUL stays significant),
    [n, width] uint8 padded with NULs (cut at `width`: the caller masks out those longer)."""
    encoded = np.array([d.encode("utf-8", "surrogatepass") + b"\x01" for d in digests], dtype=bytes)
    width = width or max(1, encoded.dtype.itemsize)
    return np.ascontiguousarray(encoded.astype(f"S{width}")).view(np.uint8).reshape(len(digests), width)


def _name(path: str) -> str:
    """A shard's JSON file name, by which a rebuild orders the shards."""
    return os.path.basename(path)[: -len(".npy")] + ".json"


def _position_bytes(total: int) -> int:
    return 4 if total < (1 << 32) - 1 else 8


class DigestIndex:
    """`records` [n] of S<width + position bytes>, sorted; `ends[s]`: the positions before shard s's end."""

    def __init__(self, paths: list[str], shards: list[np.ndarray]) -> None:
        self.paths, self.shards = paths, shards
        self.hex_length: int | None = None  # the digests' length where keys are packed hexadecimal, else None
        self.width, self.position_bytes = 1, 4
        self.records = np.zeros(0, dtype="S5")
        self.spare = 0  # records allocated beyond the built ones, so that `add` merges without a copy of them all
        self.ends = np.zeros(len(shards), dtype=np.int64)
        self.first_digest: str | None = None  # the dictionary's first entry: `dim` is its shard's width
        self.first_path = ""  # the shard it was read from
        self._store = self.records  # `records` is its start; the rest is room for `add`

    @classmethod
    def build(cls, paths: list[str], shards: list[np.ndarray], read: Callable[[int], list[str] | None],
              spare: int = 0) -> DigestIndex:
        """From each shard's path and memory-mapped rows, in name order; `read(s)`: shard s's digests (one per
        row), or None where it is damaged (skipped). `spare`: room for that many more records (`add`); pages
        never written cost no memory. Hexadecimal keys are written into the records shard by
        shard; at the first digest of another form every shard is read again as text (two passes: the widest
        digest first), so no more than one shard's digests are ever held as Python strings."""
        index = cls(paths, shards)
        index.spare = spare
        capacity = sum(len(rows) for rows in shards)
        index.position_bytes = _position_bytes(capacity + spare)
        hex_length = None
        for s in range(len(shards)):
            digests = read(s)
            if digests:
                hex_length = len(digests[0])
                break
        if hex_length and hex_length % 2 == 0 and index._fill(read, capacity, hex_length // 2, hex_length):
            index.hex_length = hex_length
        else:
            width = max([max((len(d.encode("utf-8", "surrogatepass")) for d in read(s) or []), default=0)
                         for s in range(len(shards))], default=0) + 1
            index._fill(read, capacity, width, None)
        index.records.sort()  # in place: each record is unique (its position), so no stability is needed
        return index

    def _fill(self, read: Callable[[int], list[str] | None], capacity: int, width: int, hex_length: int | None) -> bool:
        """Every shard's records, keys packed (hex_length) or as text of `width`; False at a digest that does
        not pack."""
        self.width = width
        record = width + self.position_bytes
        # pages untouched until written: skipped rows and the spare room cost nothing
        records = np.empty(capacity + self.spare, dtype=f"S{record}")
        raw = records.view(np.uint8).reshape(len(records), record)
        at = 0
        self.first_digest = None
        for s in range(len(self.shards)):
            digests = read(s) or []
            keys = _packed_hex(digests, hex_length) if hex_length else _text(digests, width)
            if keys is None:
                return False
            raw[at:at + len(keys), :width] = keys
            raw[at:at + len(keys), width:] = np.arange(at, at + len(keys), dtype=f">u{self.position_bytes}").view(
                np.uint8).reshape(len(keys), self.position_bytes)
            if self.first_digest is None and digests:
                self.first_digest, self.first_path = digests[0], self.paths[s]
            at += len(keys)
            self.ends[s] = at
        self._store, self.records = records, records[:at]
        return True

    def add(self, path: str, rows: np.ndarray, digests: list[str]) -> bool:
        """Shard `path` (its memory-mapped `rows`, one digest a row) merged in, to answer as a rebuild with it
        would; False where it cannot be (an empty index, digests of another form than its keys, positions past
        their width): the caller builds again."""
        m, total = len(digests), int(self.ends[-1]) if len(self.ends) else 0
        if not len(self.records) or m != len(rows) or _position_bytes(total + m) != self.position_bytes:
            return False
        if self.hex_length is not None:
            keys = _packed_hex(digests, self.hex_length)
        elif all(len(d.encode("utf-8", "surrogatepass")) < self.width for d in digests):
            keys = _text(digests, self.width)
        else:
            keys = None
        if keys is None:
            return False
        new = np.empty(m, dtype=self.records.dtype)
        raw = new.view(np.uint8).reshape(m, self.records.dtype.itemsize)
        raw[:, :self.width] = keys
        raw[:, self.width:] = np.arange(total, total + m, dtype=f">u{self.position_bytes}").view(np.uint8).reshape(
            m, self.position_bytes)
        self._merge(np.sort(new[self._taken(path, digests)]))
        self.paths.append(path)
        self.shards.append(rows)
        self.ends = np.append(self.ends, total + m)
        if m and (self.first_digest is None or _name(path) < _name(self.first_path)):
            self.first_digest, self.first_path = digests[0], path
        return True

    def _taken(self, path: str, digests: list[str]) -> np.ndarray:
        """Which of a new shard's rows a rebuild would take: all but those whose digest is cached in a shard
        later in name order (added positions are the highest, so those rows would win every look-up)."""
        found, shards, _ = self.lookup(digests)
        later = np.array([_name(p) > _name(path) for p in self.paths], dtype=bool)
        taken = np.ones(len(digests), dtype=bool)
        taken[np.flatnonzero(found)[later[shards]]] = False
        return taken

    def _merge(self, new: np.ndarray) -> None:
        """Sorted records merged into the sorted records, in place where the spare room holds them."""
        n, m = len(self.records), len(new)
        if len(self._store) < n + m:  # no room left: a larger array, half as large again, the records copied over
            store = np.empty(max(n + m, n + n // 2), dtype=self.records.dtype)
            store[:n] = self.records
            self._store = store
        store = self._store
        at = np.searchsorted(store[:n], new)  # each new record goes before old record at[j] (keys are unique)
        # Old record i moves up by the number of new records placed before it: from the top down, a chunk at a
        # time, so no record is overwritten before it has moved (destinations are at or above their sources).
        for hi in range(n, 0, -MERGE_CHUNK):
            lo = max(0, hi - MERGE_CHUNK)
            shift = np.searchsorted(at, np.arange(lo, hi), side="right")
            if not shift[-1]:
                break  # these and every record below stay where they are
            store[np.arange(lo, hi) + shift] = store[lo:hi].copy()
        store[at + np.arange(m)] = new
        self.records = store[:n + m]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def nbytes(self) -> int:
        return self.records.nbytes + self.ends.nbytes

    @property
    def dim(self) -> int:
        if self.first_digest is None:
            return 0
        return self.shards[int(self.lookup([self.first_digest])[1][0])].shape[1]

    def _raw(self) -> np.ndarray:
        """The records as [n, record bytes] uint8."""
        return self.records.view(np.uint8).reshape(len(self.records), self.records.dtype.itemsize)

    def _encode(self, digests: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Query digests as keys, [n, width] uint8, and which could be in the index at all."""
        if self.hex_length is not None:
            packed = _packed_hex(digests, self.hex_length)
            if packed is not None:
                return packed, np.ones(len(digests), dtype=bool)
            one = [_packed_hex([d], self.hex_length) for d in digests]
            ok = np.array([p is not None for p in one], dtype=bool)
            keys = np.zeros((len(digests), self.width), dtype=np.uint8)
            for i in np.flatnonzero(ok):
                keys[i] = one[i][0]
            return keys, ok
        too_long = np.array([len(d.encode("utf-8", "surrogatepass")) >= self.width for d in digests], dtype=bool)
        return _text(digests, self.width), ~too_long  # too long to be cached: cut here, and masked out

    def lookup(self, digests: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, shard numbers, rows) in the digests' order, the last two for the digests found."""
        found = np.zeros(len(digests), dtype=bool)
        shards, rows = [np.zeros(0, dtype=np.int32)], [np.zeros(0, dtype=np.int32)]
        raw = self._raw()
        starts = self.ends - np.diff(self.ends, prepend=0)
        for start in range(0, len(digests) if len(self) else 0, LOOKUP_CHUNK):
            keys, ok = self._encode(list(digests[start:start + LOOKUP_CHUNK]))
            query = np.full((len(keys), raw.shape[1]), 255, dtype=np.uint8)  # above every position of the key
            query[:, :self.width] = keys
            at = np.searchsorted(self.records, query.view(self.records.dtype).ravel()) - 1  # its last record
            hit = ok & (at >= 0) & (raw[np.maximum(at, 0), :self.width] == keys).all(axis=1)
            found[start:start + len(keys)] = hit
            position = raw[at[hit], self.width:].copy().view(f">u{self.position_bytes}").ravel().astype(np.int64)
            shard = np.searchsorted(self.ends, position, side="right")
            shards.append(shard.astype(np.int32))
            rows.append((position - starts[shard]).astype(np.int32))  # rows of one shard: np.save's 2^31 at most
        return found, np.concatenate(shards), np.concatenate(rows)

    def digests(self) -> list[str]:
        """Every digest cached, once each (sorted by key, not by shard)."""
        keys = self._raw()[:, :self.width]
        keys = keys[np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)]] if len(keys) else keys
        if self.hex_length is not None:
            return [bytes(k).hex() for k in keys]
        return [bytes(k).rstrip(b"\x00")[:-1].decode("utf-8", "surrogatepass") for k in keys]
