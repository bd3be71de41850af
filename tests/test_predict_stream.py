"""Streaming prediction: folders and tables read lazily, rows written batch by batch, resume after a kill."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, TINY, TINY_SIZE, make_class_images, tiny_colour_bundle

import headstart as hs
from headstart.deploy.predict_inputs import iter_inputs
from headstart.deploy.predict_stream import stream_predict
from headstart.errors import HeadstartError


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return tiny_colour_bundle(str(tmp_path_factory.mktemp("stream")))


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_folder_and_tables_stream_the_same_predictions(tiny_bundle, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bundle, data = tiny_bundle
    est = hs.load(bundle)
    est.verbose = False
    paths = list(iter_inputs("image", [data]))
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    paths.append(str(tmp_path / "broken.png"))
    expected = est.predict(paths)
    rel = [os.path.relpath(p, tmp_path) for p in paths]
    with open(tmp_path / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path"], *([r] for r in rel)])
    with open(tmp_path / "list.jsonl", "w") as f:
        f.writelines(json.dumps({"path": r}) + "\n" for r in rel)
    pq.write_table(pa.table({"file": rel}), tmp_path / "list.parquet")

    sources = {"csv": ([str(tmp_path / "list.csv")], None), "jsonl": ([str(tmp_path / "list.jsonl")], None),
               "parquet": ([str(tmp_path / "list.parquet")], "file"), "folder": ([data, paths[-1]], None)}
    for name, (inputs, column) in sources.items():
        out = str(tmp_path / f"{name}.csv")
        summary = stream_predict(est, inputs, out, with_probs=True, batch_size=5, column=column, verbose=False)
        rows = _read_csv(out)
        assert summary["rows"] == len(paths) and summary["unreadable"] == 1, name
        assert [r["prediction"] or None for r in rows] == expected, name
        assert rows[-1]["error"] == "unreadable image" and rows[0]["error"] == ""
        probs = np.array([[float(r[f"p_{c}"]) for c in est.classes_] for r in rows[:-1]])
        assert np.allclose(probs.sum(1), 1.0, atol=1e-4)


def test_jsonl_output_and_resume_refuses_other_inputs(tiny_bundle, tmp_path):
    bundle, data = tiny_bundle
    est = hs.load(bundle)
    out = str(tmp_path / "p.jsonl")
    stream_predict(est, [os.path.join(data, "red")], out, verbose=False)
    with open(out) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 8 and all(r["prediction"] in COLOURS for r in rows)
    again = stream_predict(est, [os.path.join(data, "red")], out, resume=True, verbose=False)
    assert again["resumed_from"] == 8  # already finished: nothing recomputed, nothing appended
    with open(out) as f:
        assert len(f.readlines()) == 8
    with pytest.raises(HeadstartError, match="other inputs"):
        stream_predict(est, [os.path.join(data, "blue")], out, resume=True, verbose=False)


# `headstart predict` whose reader stalls for good on the input named by STALL_AT (as on a hung network mount).
# (A named pipe did this once; predict now refuses to open anything but regular files, so the stall is simulated.)
STALLING_CLI = """
import os, sys, time
import headstart.deploy.batch_scorer as bs
from headstart.cli import main
prepare = bs.BatchScorer.prepare
def stalled(self, item):
    while isinstance(item, str) and item.endswith(os.environ["STALL_AT"]):
        time.sleep(1)
    return prepare(self, item)
bs.BatchScorer.prepare = stalled
main()
"""


def test_killed_run_resumes_where_it_stopped(tiny_bundle, tmp_path):
    """The reader stalls mid-run on one input, deterministically; the run is then SIGKILLed."""
    bundle, data = tiny_bundle
    folder = tmp_path / "images"
    make_class_images(str(folder), {"a": (200, 40, 40), "b": (40, 40, 200)}, per_class=6)
    stall = folder / "b" / "b_3.png"  # 10th file of 12 in walk order: batches of 2 finish up to it
    out = str(tmp_path / "pred.csv")
    args = ["predict", bundle, str(folder), "--out", out, "--batch-size", "2", "--quiet"]
    cmd = [sys.executable, "-m", "headstart.cli", *args]
    proc = subprocess.Popen([sys.executable, "-c", STALLING_CLI, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "STALL_AT": str(stall)})
    progress = out + ".progress.json"
    deadline = time.time() + 120
    state = {}
    while time.time() < deadline and state.get("rows", 0) < 8:
        time.sleep(0.05)
        if os.path.exists(progress):
            with open(progress) as f:
                state = json.load(f)
        assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state["rows"] == 8 and not state["done"]
    with open(out, "a") as f:
        f.write("/torn/write.png,a,0.9")  # what a kill in the middle of a write leaves behind
    resumed = subprocess.run([*cmd[:-1], "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "wrote 12 predictions" in resumed.stderr, resumed.stderr
    assert "resumed after 8" in resumed.stderr
    est = hs.load(bundle)
    rows = _read_csv(out)
    fresh = str(tmp_path / "fresh.csv")
    stream_predict(est, [str(folder)], fresh, batch_size=2, verbose=False)
    assert rows == _read_csv(fresh) and len(rows) == 12


def test_a_run_that_fails_before_its_first_batch_leaves_the_earlier_output_as_it_was(tiny_bundle, tmp_path):
    # bench/reliability.py: `predict --out` truncated the output of an earlier run before reading a single input,
    # so a typo in an input name, or a table without the column, lost those predictions.
    bundle, data = tiny_bundle
    est = hs.load(bundle)
    out = str(tmp_path / "p.csv")
    stream_predict(est, [os.path.join(data, "red")], out, verbose=False)
    before = {p: Path(p).read_bytes() for p in (out, out + ".progress.json")}
    table = tmp_path / "texts.csv"
    table.write_text("text\nhello\n")
    for inputs, error in [([os.path.join(data, "red"), str(tmp_path / "no_such.png")], "no such file"),
                          ([str(table)], "no 'path' column")]:
        with pytest.raises(HeadstartError, match=error):
            stream_predict(est, inputs, out, verbose=False)
        assert {p: Path(p).read_bytes() for p in before} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    stream_predict(est, [str(empty)], out, verbose=False)  # no inputs at all: a fresh output, the header alone
    assert _read_csv(out) == [] and Path(out).read_text().startswith("path,prediction")


def test_csv_header_survives_class_names_with_commas_and_quotes(tmp_path):
    """The header goes through the same csv writer as the rows: a class name with a comma or a double quote
    (legal in a folder name) must not shift the columns of the file the user reads back."""
    names = {'red, dark': (200, 40, 40), 'say "blue"': (40, 40, 200)}
    data = make_class_images(str(tmp_path / "train"), names, per_class=6)
    est = hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, strategy="features",
                             head_epochs=2, verbose=False, use_cache=False).fit(data)
    assert sorted(est.classes_) == sorted(names)
    out = str(tmp_path / "pred.csv")
    stream_predict(est, [data], out, with_probs=True, verbose=False)
    rows = _read_csv(out)
    assert list(rows[0]) == ["path", "prediction", "score", "error", *(f"p_{c}" for c in est.classes_)]
    assert len(rows) == 12 and all(None not in r for r in rows)  # None collects cells beyond the header
    assert [r["prediction"] for r in rows] == est.predict(list(iter_inputs("image", [data])))
    probs = np.array([[float(r[f"p_{c}"]) for c in est.classes_] for r in rows])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
