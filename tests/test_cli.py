"""The CLI end to end, as a user runs it: real subprocesses, real files."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from conftest import TINY, TINY_SIZE

HEADSTART = [sys.executable, "-m", "headstart.cli"]


def run(*args, check=True):
    proc = subprocess.run([*HEADSTART, *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from conftest import COLOURS, make_class_images

    root = tmp_path_factory.mktemp("cli")
    data = make_class_images(str(root / "train"), COLOURS, per_class=10)
    out = str(root / "run")
    run("fit", data, "--backbone", TINY, "--scratch", "--image-size", str(TINY_SIZE), "--strategy", "two-stage",
        "--epochs", "1", "--head-epochs", "10", "--out", out, "--quiet")
    return data, out


def test_fit_writes_bundle_metrics_and_report(fitted):
    _, out = fitted
    assert os.path.isfile(os.path.join(out, "model.hs"))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    epochs = [r for r in lines if "stage" in r]
    assert {r["stage"] for r in epochs} == {"head", "finetune"}
    assert lines[-1]["event"] == "final" and lines[-1]["strategy"] == "two-stage"
    for png in ("learning_curves.png", "confusion_matrix.png"):
        with open(os.path.join(out, "report", png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.isfile(os.path.join(out, "report", "index.html"))


def test_evaluate_json(fitted):
    data, out = fitted
    result = json.loads(run("evaluate", os.path.join(out, "model.hs"), data, "--json").stdout)
    assert {"accuracy", "macro_f1", "n"} <= set(result) and result["n"] == 30
    # The bundle's own predictions on the same images, in this process: evaluate must report exactly their accuracy.
    import headstart as hs
    from headstart.deploy.predict_inputs import iter_inputs

    paths = list(iter_inputs("image", [data]))
    est = hs.load(os.path.join(out, "model.hs"))
    est.verbose = False
    right = sum(p == os.path.basename(os.path.dirname(x)) for p, x in zip(est.predict(paths), paths))
    assert result["accuracy"] == pytest.approx(right / len(paths))
    # These are the training images, three colours apart that even a random backbone's features separate
    # (conftest): far above the 1/3 of chance (1.0 measured; 0.8 allows a few borderline images).
    assert result["accuracy"] >= 0.8, result


def test_predict_csv_and_jsonl(fitted, tmp_path):
    data, out = fitted
    bundle = os.path.join(out, "model.hs")
    rows = list(csv.DictReader(io.StringIO(run("predict", bundle, os.path.join(data, "red"), "--probs").stdout)))
    assert len(rows) == 10 and {"path", "prediction", "score", "p_red"} <= set(rows[0])
    assert all(r["prediction"] in {"red", "green", "blue"} for r in rows)
    target = tmp_path / "p.jsonl"
    run("predict", bundle, os.path.join(data, "blue", "blue_0.png"), os.path.join(data, "green"), "--out",
        str(target), "--quiet")
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(records) == 11 and records[0]["path"].endswith("blue_0.png")


# Run in a fresh interpreter: whether glibc serves a 64 MiB block with mmap shows the allocator setting that
# tune_allocator changes (M_MMAP_MAX 0: never mmap), which no environment variable or API reads back.
_ALLOCATOR_PROBE = """
import ctypes, sys
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = Info, ctypes.c_void_p, [ctypes.c_void_p]
def big_block_mapped():
    before = libc.mallinfo2().hblks
    block = libc.malloc(64 << 20)
    mapped = libc.mallinfo2().hblks > before
    libc.free(block)
    return mapped
import headstart.cli
print("after import:", big_block_mapped(), file=sys.stderr)
sys.argv = ["headstart", "--help"]
try:
    headstart.cli.main()
except SystemExit:
    pass
print("after main:", big_block_mapped(), file=sys.stderr)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="probes glibc's malloc")
def test_importing_the_cli_leaves_the_allocator_alone_and_the_entry_point_tunes_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults, untuned
    proc = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("after ")]
    assert lines == ["after import: True", "after main: False"], proc.stderr


def test_models_lists_the_offline_backbone():
    proc = run("models")
    line = next(x for x in proc.stdout.splitlines() if "efficientnet_lite0" in x)
    assert "yes" in line


@pytest.mark.parametrize("args, message", [
    (["fit", "/no/such/folder"], "/no/such/folder: no such file or folder"),
    (["evaluate", "/no/such.hs", "."], "/no/such.hs: no such bundle"),
    (["fit", ".", "--strategy", "magic", "--backbone", "efficientnet_lite0"], None),
    (["fit", ".", "--backbone", "timm:resnet18"], None),
])
def test_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    from conftest import COLOURS, make_class_images

    data = make_class_images(str(tmp_path / "d"), COLOURS, per_class=3)
    args = [data if a == "." else a for a in args]
    proc = run(*args, "--quiet", check=False) if args[0] == "fit" else run(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    assert lines[-1].startswith("error:"), proc.stderr
    if message:
        assert message in proc.stderr.replace("\n", "")


def test_single_class_is_refused_from_the_cli(tmp_path):
    from conftest import COLOURS, make_class_images

    data = make_class_images(str(tmp_path / "d"), {"red": COLOURS["red"]}, per_class=3)
    proc = run("fit", data, "--quiet", check=False)
    assert proc.returncode == 2 and "only one class" in proc.stderr and "Traceback" not in proc.stderr


_HELP_PROBE = """
import sys
import headstart.cli
sys.argv = ["headstart", "--help"]
try:
    headstart.cli.main()
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "timm", "transformers", "sklearn") if m in sys.modules)
print("heavy:", ",".join(heavy) or "none", file=sys.stderr)
"""


def test_help_answers_without_loading_torch():
    """`headstart --help` (and an argument error) must not wait ~10 s for torch, timm and scikit-learn to import."""
    proc = subprocess.run([sys.executable, "-c", _HELP_PROBE], capture_output=True, text=True, timeout=120)
    assert "Usage" in proc.stdout and "fit" in proc.stdout
    assert "heavy: none" in proc.stderr, proc.stderr
