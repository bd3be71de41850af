"""The feature cache: frozen-backbone features computed once per (backbone, weights, preprocessing, file content).

Layout: `<root>/features/<model key>/shard-<id>.npy` (float32 rows, memory-mapped on read) beside
`shard-<id>.json` (the content hash of each row). A shard counts only once both files are complete: each is
written to a temporary name and renamed, the JSON last, so a crash leaves at worst an orphan `.npy` that is
ignored; a shard whose array does not match its JSON is treated as missing and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np


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
    """Rows of features keyed by file content hash, for one model key."""

    def __init__(self, root: str, key: str) -> None:
        self.dir = os.path.join(root, "features", key)
        self._index: dict[str, tuple[np.ndarray, int]] | None = None

    def _load_index(self) -> dict[str, tuple[np.ndarray, int]]:
        if self._index is not None:
            return self._index
        index: dict[str, tuple[np.ndarray, int]] = {}
        if os.path.isdir(self.dir):
            for name in sorted(os.listdir(self.dir)):
                if not (name.startswith("shard-") and name.endswith(".json")):
                    continue
                base = os.path.join(self.dir, name[: -len(".json")])
                try:
                    with open(base + ".json") as f:
                        digests = json.load(f)["digests"]
                    rows = np.load(base + ".npy", mmap_mode="r")
                except (OSError, ValueError, KeyError, json.JSONDecodeError):
                    continue  # half-written or damaged: recomputed on demand
                if rows.ndim != 2 or rows.shape[0] != len(digests):
                    continue
                for i, d in enumerate(digests):
                    index[d] = (rows, i)
        self._index = index
        return index

    def get(self, digests: list[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """Features for the digests found (zeros elsewhere) and a boolean mask of which were found."""
        index = self._load_index()
        found = np.array([d in index for d in digests], dtype=bool)
        if not found.any():
            return None, found
        dim = next(iter(index.values()))[0].shape[1]
        out = np.zeros((len(digests), dim), dtype=np.float32)
        for i, d in enumerate(digests):
            if found[i]:
                rows, r = index[d]
                out[i] = rows[r]
        return out, found

    def put(self, digests: list[str], features: np.ndarray) -> None:
        if not digests:
            return
        os.makedirs(self.dir, exist_ok=True)
        base = os.path.join(self.dir, f"shard-{uuid.uuid4().hex[:12]}")
        arr = np.ascontiguousarray(features, dtype=np.float32)
        write_atomic(base + ".npy", lambda f: np.save(f, arr))
        write_atomic(base + ".json", lambda f: f.write(json.dumps({"digests": list(digests)}).encode()))
        self._index = None
