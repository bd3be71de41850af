"""Reading a feature shard's rows (`.npy`, float32) straight from its file with read(2), into a caller's array:
no mapping whose pages count in the process's resident memory, no allocation per read (cache.ShardRows)."""

from __future__ import annotations

import numpy as np


def float32_layout(path: str) -> tuple[int, int] | None:
    """(where the rows start, their width) of a `.npy` file of a C-ordered float32 matrix; None for any other."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                return None
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError):
        return None
    if len(shape) != 2 or fortran or dtype != np.dtype("<f4"):
        return None
    return offset, shape[1]


def read_exact(f, offset: int, out: np.ndarray) -> None:
    """Fill `out` (C-contiguous) with the file's bytes from `offset`."""
    view = memoryview(out).cast("B")
    f.seek(offset)
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise OSError(f"{f.name}: {len(view) - done} bytes short of its rows")
        done += got
