"""The feature cache: frozen-backbone features computed once per (backbone, weights, preprocessing, file content).

Layout: `<root>/features/<model key>/shard-<id>.npy` (float32 rows, memory-mapped on read) beside
`shard-<id>.json` (the content hash of each row). A shard counts only once both files are complete: each is
written to a temporary name and renamed, the JSON last, so a crash leaves at worst an orphan `.npy` that is
ignored; a shard whose array does not match its JSON is treated as missing and recomputed.

`ShardRows` reads chosen rows of the shards back a batch at a time, for head stages on more rows than memory
holds (stream.py): the whole matrix is never in one array.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .cache_index import DigestIndex
from .shard_io import float32_layout, read_exact


def file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(paths: list[str]) -> list[str]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(file_digest, paths))


def model_key(*parts: object) -> str:
    """A stable key from JSON-able parts (backbone spec, weights hash, preprocessing)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def write_atomic(path: str, write) -> None:
    """`write(f)` into a temporary file beside `path`, synced, then renamed over it: readers see all or nothing."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class FeatureCache:
    """Rows of features keyed by file content hash, for one model key. Its index of where each digest's row is
    (cache_index.DigestIndex: sorted NumPy records, 20 bytes a row) is read once, on the first look-up, and each
    shard this object writes is merged into it (a rebuild would read every shard again)."""

    def __init__(self, root: str, key: str) -> None:
        self.dir = os.path.join(root, "features", key)
        self._index: DigestIndex | None = None
        self._spare = 0

    def reserve(self, rows: int) -> None:
        """Room in the index for `rows` more, so that merging the shards put later copies no index (a caller
        about to write that many rows, a shard at a time: inference.cached_rows)."""
        self._spare = max(self._spare, rows)

    def _load_index(self) -> DigestIndex:
        if self._index is not None:
            return self._index
        bases, shards = [], []
        if os.path.isdir(self.dir):
            for name in sorted(os.listdir(self.dir)):
                if not (name.startswith("shard-") and name.endswith(".json")):
                    continue
                base = os.path.join(self.dir, name[: -len(".json")])
                try:
                    rows = np.load(base + ".npy", mmap_mode="r")
                except (OSError, ValueError):
                    continue  # half-written or damaged: recomputed on demand
                if rows.ndim == 2:
                    bases.append(base)
                    shards.append(rows)

        def read(s: int) -> list[str] | None:
            """Shard s's digests, or None where its JSON is damaged or does not match its rows."""
            try:
                with open(bases[s] + ".json") as f:
                    digests = json.load(f)["digests"]
            except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
                return None
            if not (isinstance(digests, list) and all(isinstance(d, str) for d in digests)):
                return None
            return digests if len(digests) == shards[s].shape[0] else None

        self._index = DigestIndex.build([rows.filename for rows in shards], shards, read, spare=self._spare)
        return self._index

    def digests(self) -> list[str]:
        """Every digest cached, once each."""
        return self._load_index().digests()

    def locate(self, digests: list[str]) -> tuple[ShardRows, np.ndarray]:
        """Where the digests' rows are, as a ShardRows in the digests' order (those found), and a mask of which
        were found. Nothing is read: the rows stay on disk."""
        index = self._load_index()
        found, shards, rows = index.lookup(digests)
        return ShardRows.of_shard_rows(index.paths, shards, rows, index.dim), found

    def get(self, digests: list[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """Features for the digests found (zeros elsewhere) and a boolean mask of which were found."""
        index = self._load_index()
        found, shards, rows = index.lookup(digests)
        if not found.any():
            return None, found
        out = np.zeros((len(digests), index.dim), dtype=np.float32)
        at = np.flatnonzero(found)
        for s in np.unique(shards):
            mine = np.flatnonzero(shards == s)
            out[at[mine]] = index.shards[s][rows[mine]]
        return out, found

    def put(self, digests: list[str], features: np.ndarray) -> None:
        if not digests:
            return
        os.makedirs(self.dir, exist_ok=True)
        base = os.path.join(self.dir, f"shard-{uuid.uuid4().hex[:12]}")
        arr = np.ascontiguousarray(features, dtype=np.float32)
        write_atomic(base + ".npy", lambda f: np.save(f, arr))
        write_atomic(base + ".json", lambda f: f.write(json.dumps({"digests": list(digests)}).encode()))
        if self._index is None:
            return
        rows = np.load(base + ".npy", mmap_mode="r")
        if not len(self._index):  # nothing indexed yet: this shard alone is the index, with none to read again
            self._index = DigestIndex.build([rows.filename], [rows], lambda _: list(digests), spare=self._spare)
        elif not self._index.add(rows.filename, rows, list(digests)):
            self._index = None  # not mergeable (cache_index.DigestIndex.add): read again on the next look-up


# Rows per read: a batch of at most this many bytes (32 MiB: 6,553 rows of 1,280 Lite0 features), so memory per
# batch is the same whatever the feature width, and large enough that a read costs far more than its Python. A
# pass holds a few copies of its batch (float64 statistics, logits, gradients): 64 MiB put the peak RSS at 10^7
# rows over 2 GB (bench/scale.py).
BATCH_BYTES = 32 << 20


@dataclass
class ShardRows:
    """Feature rows on disk, read a batch at a time and never all at once: `parts` holds (shard `.npy` path, a
    range of its rows); a row's position is its place in the parts' concatenation.

    Each read maps the shard, copies its batch out and unmaps it again: pages of a mapping kept open count in the
    process's resident memory until the kernel needs them back, so a pass over a 40 GB cache would show 40 GB.
    """

    parts: list[tuple[str, range]]
    dim: int
    most_rows_read: int = field(default=0, compare=False)  # the largest batch read so far (tests check it)

    @classmethod
    def of_shards(cls, paths: list[str]) -> ShardRows:
        """Every row of each shard, in order."""
        parts, dim = [], 0
        for path in paths:
            shape = np.load(path, mmap_mode="r").shape
            parts.append((path, range(shape[0])))
            dim = shape[1]
        return cls(parts, dim)

    @classmethod
    def of_rows(cls, paths: list[str], rows: list[int], dim: int) -> ShardRows:
        """One part per run of consecutive rows from the same shard (a cache written in order is a few parts)."""
        names = sorted(set(paths))
        number = {p: i for i, p in enumerate(names)}
        return cls.of_shard_rows(names, np.array([number[p] for p in paths], dtype=np.int64), np.asarray(rows), dim)

    @classmethod
    def of_shard_rows(cls, paths: list[str], shards: np.ndarray, rows: np.ndarray, dim: int) -> ShardRows:
        """As of_rows, from arrays: row `rows[i]` of shard `paths[shards[i]]`; runs found without a Python loop
        over the rows."""
        shards, rows = np.asarray(shards), np.asarray(rows)
        if not len(rows):
            return cls([], dim)
        starts = np.flatnonzero(np.r_[True, (shards[1:] != shards[:-1]) | (rows[1:] != rows[:-1] + 1)])
        stops = np.r_[starts[1:], len(rows)]
        parts = [(paths[s], range(a, b + 1)) for s, a, b in
                 zip(shards[starts].tolist(), rows[starts].tolist(), rows[stops - 1].tolist())]
        return cls(parts, dim)

    def __len__(self) -> int:
        return sum(len(r) for _, r in self.parts)

    def batch_rows(self) -> int:
        return max(256, BATCH_BYTES // (4 * max(1, self.dim)))

    def _read(self, path: str, rows: range | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows of one shard (a range, or sorted indices), into `out`'s first rows where given.

        Read with read(2) from the file, not through a mapping: a mapped shard's pages count in the process's
        resident memory while mapped (the fault-around of a few thousand scattered rows maps many MiB), and
        reading into a caller's buffer allocates nothing per batch (see batches)."""
        layout = float32_layout(path)
        if layout is None:  # not a C-ordered float32 matrix (never written by put): through a mapping, copied
            shard = np.load(path, mmap_mode="r")
            got = np.array(shard[rows.start:rows.stop] if isinstance(rows, range) else shard[rows], dtype=np.float32)
            del shard  # unmapped here, not whenever the collector gets to it
            if out is None:
                out = got
            else:
                out = out[:len(got)]
                out[:] = got
        else:
            offset, dim = layout
            out = np.empty((len(rows), dim), dtype=np.float32) if out is None else out[:len(rows)]
            with open(path, "rb", buffering=0) as f:
                if isinstance(rows, range):
                    read_exact(f, offset + rows.start * dim * 4, out)
                else:
                    for i, r in enumerate(np.asarray(rows).tolist()):  # a subsample's scattered rows: one read each
                        read_exact(f, offset + r * dim * 4, out[i])
        self.most_rows_read = max(self.most_rows_read, len(out))
        return out

    def batches(self, batch_rows: int | None = None, reuse: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """(position of the batch's first row, rows [k, dim] float32), in order, k <= batch_rows. `reuse`: every
        batch is read into one buffer, which the next batch overwrites (for a caller done with each batch before
        the next): a new array per batch, freed a batch later, left glibc's heap (its large allocations are not
        mapped: _allocator.py) holding some 450 MiB more at 10^7 rows (bench/scale.py)."""
        size = batch_rows or self.batch_rows()
        buffer = np.empty((min(size, len(self)), self.dim), dtype=np.float32) if reuse else None
        position = 0
        for path, rows in self.parts:
            for i in range(0, len(rows), size):
                chunk = rows[i:i + size]
                yield position, self._read(path, chunk, buffer)
                position += len(chunk)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The rows at `positions` (a subsample: the caller keeps it small), in the order given."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.zeros((len(positions), self.dim), dtype=np.float32)
        offset = 0
        for path, rows in self.parts:
            mine = np.flatnonzero((positions >= offset) & (positions < offset + len(rows)))
            if len(mine):
                local = rows.start + positions[mine] - offset
                order = np.argsort(local, kind="stable")  # a file reads fastest front to back
                for i in range(0, len(order), self.batch_rows()):  # no read larger than a batch, here either
                    some = order[i:i + self.batch_rows()]
                    out[mine[some]] = self._read(path, local[some])
            offset += len(rows)
        return out

    def split(self, rank: int, world: int) -> ShardRows:
        """This process's contiguous share of the positions (sizes differ by one row at most)."""
        n = len(self)
        start, stop = rank * n // world, (rank + 1) * n // world
        parts: list[tuple[str, range]] = []
        offset = 0
        for path, rows in self.parts:
            lo, hi = max(start - offset, 0), min(stop - offset, len(rows))
            if lo < hi:
                parts.append((path, rows[lo:hi]))
            offset += len(rows)
        return ShardRows(parts, self.dim)
