"""Multi-process training (DDP through Accelerate, gloo on CPU): two processes give the result one gives, and only
the first process writes files.

Writes are observed, not assumed: a `sitecustomize` on the children's path installs a Python audit hook that
logs, per rank, every file opened for writing and every rename.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import TINY, TINY_SIZE

from headstart.bundle import read_bundle
from headstart.cache import FeatureCache

AUDIT_HOOK = textwrap.dedent("""
    import os, sys
    _log = os.path.join(os.environ["HS_AUDIT_DIR"], "rank-%s.log" % os.environ.get("RANK", "single"))

    def _hook(event, args):
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR):
                _write(os.fsdecode(args[0]))
        elif event in ("os.rename", "os.replace"):
            _write(os.fsdecode(args[1]))

    def _write(path):
        if not path.startswith(_log):
            with open(_log, "a") as f:
                f.write(os.path.abspath(path) + "\\n")

    sys.addaudithook(_hook)
""")


def _lines(path) -> list[str]:
    with open(path) as f:
        return f.read().split("\n")[:-1]


def _fit(cmd: list[str], out: str, cache: str, env_extra: dict | None = None) -> None:
    env = {**os.environ, "HEADSTART_CACHE": cache, "CUDA_VISIBLE_DEVICES": "", **(env_extra or {})}
    proc = subprocess.run([*cmd, "--out", out], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"


def test_two_processes_match_one_and_only_the_first_writes(fashion, tmp_path):
    train, _ = fashion  # real Fashion-MNIST photos, 20 per class
    fit = ["-m", "headstart.cli", "fit", train, "--backbone", TINY, "--scratch", "--image-size", str(TINY_SIZE),
           "--strategy", "two-stage", "--head-epochs", "12", "--epochs", "1", "--quiet"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    one_cache, two_cache = str(tmp_path / "cache-one"), str(tmp_path / "cache-two")
    _fit([sys.executable, *fit], one, one_cache)

    hook_dir, audit = tmp_path / "hook", tmp_path / "audit"
    hook_dir.mkdir()
    audit.mkdir()
    (hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    _fit([torchrun, "--standalone", "--nproc_per_node", "2", *fit], two, two_cache,
         {"PYTHONPATH": str(hook_dir), "HS_AUDIT_DIR": str(audit)})

    # the same model, within what different float reduction orders and a padded last batch allow
    config_one, state_one = read_bundle(os.path.join(one, "model.hs"))
    config_two, state_two = read_bundle(os.path.join(two, "model.hs"))
    assert config_two["labels"] == config_one["labels"] and state_two.keys() == state_one.keys()
    acc_one, acc_two = (c["metrics"]["validation"]["accuracy"] for c in (config_one, config_two))
    assert acc_one > 0.3, "the single-process run must learn something for the comparison to mean anything"
    assert abs(acc_two - acc_one) <= 0.1
    history = [[r for r in map(json.loads, _lines(os.path.join(d, "metrics.jsonl"))) if "epoch" in r]
               for d in (one, two)]  # one record per epoch (the file may end with a summary record)
    assert [(r["stage"], r["epoch"]) for r in history[1]] == [(r["stage"], r["epoch"]) for r in history[0]]
    head = [r for r in history[0] if r["stage"] == "head"]
    head_two = [r for r in history[1] if r["stage"] == "head"]
    # 160 training images = 5 whole batches: the head stage's DDP updates equal one process's up to float order
    assert [r["val_loss"] for r in head_two] == pytest.approx([r["val_loss"] for r in head], rel=1e-3)

    # features were split between the processes and gathered: the cache holds every row, equal to one process's
    cache_one, cache_two = (FeatureCache(c, os.listdir(os.path.join(c, "features"))[0]) for c in (one_cache,
                                                                                                  two_cache))
    digests = list(cache_one._load_index())
    rows_one, found_one = cache_one.get(digests)
    rows_two, found_two = cache_two.get(digests)
    assert found_one.all() and found_two.all() and len(digests) == 200
    np.testing.assert_allclose(rows_two, rows_one, rtol=1e-4, atol=1e-5)

    # only rank 0 wrote the bundle, report, metrics and cache; rank 1 wrote nothing there
    logs = {name: _lines(audit / name) for name in os.listdir(audit)}
    assert set(logs) >= {"rank-0.log"}
    rank0 = logs["rank-0.log"]
    rank1 = logs.get("rank-1.log", [])
    assert os.path.join(two, "model.hs") in rank0
    assert any(p.startswith(os.path.join(two, "report")) for p in rank0)
    assert any(p.startswith(two_cache) for p in rank0)
    assert not [p for p in rank1 if p.startswith((two, two_cache))], rank1
