"""The feature cache's digest index: resident memory of loading it, and of one look-up, for N cached rows.

    python bench/index_memory.py [--rows 1000000] [--old main]

Writes N synthetic 32-character hexadecimal digests (headstart's form) in shards of 50,000 one-wide rows (as
inference.cached_rows writes them), then in a fresh process per version of cache.py (this tree's, and the one at
git revision --old, e.g. main's dictionary index) prints RSS after imports, after building the query (the
caller's list of N digest strings, the same for both), after loading the index, and after locate() on every
digest; the peak (ru_maxrss) after each, and the seconds each step took. Light: one thread, one process at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

PROBE = r"""
import hashlib, importlib.util, json, resource, sys, time
import numpy as np

def rss():
    with open("/proc/self/status") as f:
        now = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
    return round(now), round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

if sys.argv[1].endswith(".py"):  # an old cache.py on its own (it imported nothing of headstart)
    spec = importlib.util.spec_from_file_location("headstart_cache_probe", sys.argv[1])
    cache = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cache
    spec.loader.exec_module(cache)
else:
    cache = importlib.import_module(sys.argv[1])
marks = {"imports": rss()}
n = int(sys.argv[3])
digests = [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in range(n)]
marks["query list"] = rss()
fc = cache.FeatureCache(sys.argv[2], "k")
t = time.perf_counter()
fc._load_index()
marks["index loaded"] = (*rss(), round(time.perf_counter() - t, 2))
t = time.perf_counter()
source, found = fc.locate(digests)
assert found.all() and len(source) == n
marks["locate"] = (*rss(), round(time.perf_counter() - t, 2))
print(json.dumps(marks))
"""


def write_cache(root: str, rows: int, shard_rows: int = 50_000) -> None:
    import hashlib

    import numpy as np

    folder = os.path.join(root, "features", "k")
    os.makedirs(folder, exist_ok=True)
    for s, start in enumerate(range(0, rows, shard_rows)):
        ids = range(start, min(rows, start + shard_rows))
        digests = [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in ids]
        np.save(os.path.join(folder, f"shard-{s:06d}.npy"), np.zeros((len(ids), 1), np.float32))
        with open(os.path.join(folder, f"shard-{s:06d}.json"), "w") as f:
            json.dump({"digests": digests}, f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--old", default="main")
    args = parser.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": here}
    with tempfile.TemporaryDirectory() as tmp:
        write_cache(os.path.join(tmp, "cache"), args.rows)
        old_dir = os.path.join(tmp, "old", "headstart")
        os.makedirs(old_dir)
        old = os.path.join(old_dir, "cache.py")
        with open(old, "w") as f:
            f.write(subprocess.run(["git", "-C", here, "show", f"{args.old}:headstart/cache.py"], check=True,
                                   capture_output=True, text=True).stdout)
        new = "headstart.cache"
        for name, path in ((f"{args.old} (dict)", old), ("this tree", new)):
            out = subprocess.run([sys.executable, "-c", PROBE, path, os.path.join(tmp, "cache"), str(args.rows)],
                                 check=True, capture_output=True, text=True, env=env).stdout
            marks = json.loads(out)
            print(f"{name}: " + ", ".join(f"{k} {v[0]} MiB (peak {v[1]})" + (f" {v[2]} s" if len(v) > 2 else "")
                                          for k, v in marks.items()))


if __name__ == "__main__":
    main()
