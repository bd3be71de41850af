"""Multi-process training (DDP through Accelerate, gloo on CPU): two processes give the losses one gives, epoch by
epoch, and only the first process writes files.

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

import headstart as hs
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


def _epoch_records(run_dir: str) -> list[dict]:
    """One record per epoch of every stage (the file may end with a summary record)."""
    return [r for r in map(json.loads, _lines(os.path.join(run_dir, "metrics.jsonl"))) if "epoch" in r]


# Two processes differ from one only in the order of float sums: features and activations computed on half
# batches by one thread each (torchrun's default) instead of whole batches by two, gradients averaged over two
# half-batch means, losses summed per process and then reduced. Measured here (tiny backbone, 160 training
# images): the solved head's validation loss moves by 5.6e-5 relative, exactly as far as it moves when one
# process runs on 1 thread instead of 2 (its L-BFGS amplifies the 1e-7 feature differences); the fine-tune's
# training losses by 3e-6. 1e-3 leaves 18x for other machines' kernels; the real differences seen in this setup
# were all larger: per-process augmentation streams (0.3-1.1%), BatchNorm statistics of half batches (1.4-3.5%),
# a training loss logged over the first process's half of the data (4-10%).
LOSS_RTOL = 1e-3


def test_two_processes_match_one_and_only_the_first_writes(fashion, tmp_path):
    train, _ = fashion  # real Fashion-MNIST photos, 20 per class
    # The tiny random backbone, saved as a bundle, loads as a pretrained one: its BatchNorm then keeps its
    # statistics while fine-tuning (a --scratch run normalises each process's half batch by that half's own
    # statistics, and SyncBatchNorm does not run on CPU). --no-augment: each process draws random crops and
    # flips for its own share of a batch, a different random stream from one process's. With both, two
    # processes compute what one does, up to float order, and every epoch's losses can be compared.
    backbone = hs.ImageClassifier(TINY, pretrained=False, image_size=TINY_SIZE, strategy="features",
                                  verbose=False, use_cache=False).fit(train).save(str(tmp_path / "tiny.hs"))
    fit = ["-m", "headstart.cli", "fit", train, "--backbone", backbone, "--image-size", str(TINY_SIZE),
           "--no-augment", "--strategy", "two-stage", "--head-epochs", "12", "--epochs", "2", "--quiet"]
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

    config_one, state_one = read_bundle(os.path.join(one, "model.hs"))
    config_two, state_two = read_bundle(os.path.join(two, "model.hs"))
    assert config_two["labels"] == config_one["labels"] and state_two.keys() == state_one.keys()
    assert config_one["metrics"]["validation"]["accuracy"] > 0.3, "the comparison needs a run that learns"
    # every stage and epoch, its training and validation loss: 160 training images are 5 whole batches of 32
    history_one, history_two = _epoch_records(one), _epoch_records(two)
    assert [(r["stage"], r["epoch"]) for r in history_one] == [("head", 1), ("finetune", 1), ("finetune", 2)]
    assert [(r["stage"], r["epoch"]) for r in history_two] == [(r["stage"], r["epoch"]) for r in history_one]
    for key in ("train_loss", "val_loss"):
        assert [r[key] for r in history_two] == pytest.approx([r[key] for r in history_one], rel=LOSS_RTOL), key

    # features were split between the processes and gathered: the cache holds every row, equal to one process's
    cache_one, cache_two = (FeatureCache(c, os.listdir(os.path.join(c, "features"))[0]) for c in (one_cache,
                                                                                                  two_cache))
    digests = cache_one.digests()
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


def test_a_time_limit_stops_every_process_together(fashion, tmp_path):
    """Under two processes the deadline is agreed (training_step.time_is_up, a collective every batch): a process
    that stopped alone would leave the other waiting on its gradients for ever. A 1 s limit has passed before the
    first batch: both processes take the agreed path and stop there, the epoch is validated and the bundle written.
    (A real disagreement, one clock past and one not, cannot be staged from outside; this checks the collective
    runs.)"""
    train, _ = fashion
    fit = ["-m", "headstart.cli", "fit", train, "--backbone", TINY, "--scratch", "--image-size", str(TINY_SIZE),
           "--no-augment", "--strategy", "full", "--epochs", "50", "--time-limit", "1", "--quiet"]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    out = str(tmp_path / "two")
    _fit([torchrun, "--standalone", "--nproc_per_node", "2", *fit], out, str(tmp_path / "cache"))
    records = _epoch_records(out)
    assert len(records) == 1 and records[0]["stopped"] == "time limit, after 0 of this epoch's examples"
    assert os.path.exists(os.path.join(out, "model.hs"))


STREAMED_FIT = textwrap.dedent("""
    import json, sys
    import headstart as hs
    from headstart import stream
    from headstart.distributed import num_processes, rank

    stream.STREAM_MIN_ROWS = 10  # stream these 160 rows as if they were 10 million
    data, cache, out, backbone, size = sys.argv[1:6]
    clf = hs.ImageClassifier(backbone=backbone, pretrained=False, image_size=int(size), strategy="features",
                             verbose=False, cache_dir=cache).fit(data)
    head = clf.model_.head
    with open(f"{out}-{rank()}.json", "w") as f:
        json.dump({"processes": num_processes(), "history": clf.history_, "refit": clf.metrics_["refit"],
                   "weight": head[2].weight.tolist(), "bias": head[2].bias.tolist()}, f)
""")


def test_a_streamed_head_on_two_processes_keeps_each_share_and_matches_one(fashion, tmp_path):
    """Above stream.STREAM_MIN_ROWS, each process embeds and caches only its own share of the rows (no gather of
    features: every shard in the cache holds one process's share) and the head is solved on both shares by
    all-reduced losses and gradients: both processes end with the same head, which is the one process's."""
    train, _ = fashion
    script = tmp_path / "streamed_fit.py"
    script.write_text(STREAMED_FIT)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    results = {}
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    for name, processes in (("one", 1), ("two", 2)):
        launch = [sys.executable] if processes == 1 else [torchrun, "--standalone", "--nproc_per_node", "2"]
        cache = str(tmp_path / f"cache-{name}")
        proc = subprocess.run([*launch, str(script), train, cache, str(tmp_path / name), TINY, str(TINY_SIZE)],
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        results[name] = [json.loads((tmp_path / f"{name}-{r}.json").read_text()) for r in range(processes)]
        (folder,) = (tmp_path / f"cache-{name}" / "features").iterdir()
        results[name + " shards"] = sorted(len(json.loads(f.read_text())["digests"]) for f in folder.glob("*.json"))
    (one,), (first, second) = results["one"], results["two"]
    assert first["processes"] == 2 and one["processes"] == 1
    assert first["history"][0]["solver"] == "logistic regression (streamed L-BFGS)"
    # 160 training and 40 validation photos: one process wrote one shard of each, two processes one of each half
    assert results["one shards"] == [40, 160] and results["two shards"] == [20, 20, 80, 80]
    assert first["weight"] == second["weight"] and first["bias"] == second["bias"], "one step, taken by both"
    assert first["refit"]["rows"] == one["refit"]["rows"] == 200
    for key in ("train_loss", "val_loss"):
        assert first["history"][0][key] == pytest.approx(one["history"][0][key], rel=LOSS_RTOL), key
    np.testing.assert_allclose(np.array(first["weight"]), np.array(one["weight"]), rtol=0, atol=2e-3)


def test_prediction_on_two_processes_writes_one_file_in_input_order(fashion, tmp_path):
    """`headstart predict` under torchrun: each process scores every second input into a part of its own, then
    the first interleaves the parts into one file in input order, the one a single process writes."""
    train, test = fashion
    bundle = hs.ImageClassifier(TINY, pretrained=False, image_size=TINY_SIZE, strategy="features", verbose=False,
                                use_cache=False).fit(train).save(str(tmp_path / "model.hs"))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    outputs = {}
    for name, launch in (("one", [sys.executable]), ("two", [torchrun, "--standalone", "--nproc_per_node", "2"])):
        out = str(tmp_path / f"{name}.csv")
        proc = subprocess.run([*launch, "-m", "headstart.cli", "predict", bundle, test, "--out", out, "--probs",
                               "--quiet"], capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        outputs[name] = _lines(out)
    assert len(outputs["one"]) == 301  # the header and 300 test photos
    one, two = ([line.split(",") for line in outputs[k]] for k in ("one", "two"))
    assert two[0] == one[0]
    # path, prediction and error column, row by row; the score and every probability to float rounding
    assert [row[:2] + row[3:4] for row in two] == [row[:2] + row[3:4] for row in one]
    numbers = [np.array([r[2:3] + r[4:] for r in rows[1:]], float) for rows in (one, two)]
    np.testing.assert_allclose(numbers[1], numbers[0], atol=1e-4)
    assert not [name for name in os.listdir(tmp_path) if ".part-" in name or name.startswith("two.csv.")]
