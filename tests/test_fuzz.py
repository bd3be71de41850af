"""Untrusted inputs, thrown at the loaders and the CLI by hypothesis: random bytes, truncated images, huge
dimensions, odd encodings, malformed CSV/JSONL and bundles. Every case must end in a clear, one-line
HeadstartError (the CLI's exit 2) or a counted skip: never a traceback, never a hang."""

import contextlib
import io
import json
import os
import signal
import struct
import sys
import tempfile
import zipfile
import zlib
from unittest import mock

import numpy as np
import pytest
from conftest import COLOURS, TINY, TINY_SIZE, make_class_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import headstart as hs
from headstart.cli import main
from headstart.data.images import ImageRowsDataset, eval_transform, image_problem, load_images
from headstart.data.texts import load_texts
from headstart.errors import HeadstartError

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """A case that takes this long counts as a hang: fail it instead of waiting forever."""
    def stop(*_):
        raise AssertionError(f"no answer after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _one_line(err: BaseException) -> None:
    assert "\n" not in str(err).strip() and str(err).strip(), f"not one clear line: {err!r}"


def _png_bytes(size: int = 24, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND",
                                                                                                            b"")


def _write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


bad_image = st.one_of(
    st.binary(max_size=2048),  # random bytes
    st.integers(0, 2000).map(lambda n: _png_bytes()[:n]),  # a PNG cut short anywhere
    st.tuples(st.integers(20_000, 2**31 - 1), st.integers(20_000, 2**31 - 1)).map(lambda wh: _png_claiming(*wh)),
    st.binary(min_size=1, max_size=64).map(lambda b: _png_bytes()[:200] + b + _png_bytes()[200:]),  # corrupted
)


@FUZZ
@given(files=st.lists(bad_image, min_size=1, max_size=4))
def test_image_folder_with_bad_files_skips_and_counts_them(files):
    with tempfile.TemporaryDirectory() as root, no_hang():
        for c in ("a", "b"):
            _write(os.path.join(root, c, "good.png"), _png_bytes(seed=ord(c)))
            for i, data in enumerate(files):
                _write(os.path.join(root, c, f"bad{i}.png"), data)
        try:
            data = load_images(root)
        except HeadstartError as err:
            _one_line(err)
            return
        assert len(data) + len(data.skipped) == 2 * (len(files) + 1)
        assert all(reason for _, reason in data.skipped)
        # what passed the header check but still fails to decode is skipped when read, never raised
        ds = ImageRowsDataset(data.items, data.targets, eval_transform(_preprocess()))
        for i in range(len(ds)):
            ds[i]


def _preprocess():
    from headstart.backbones.base import ImagePreprocess

    return ImagePreprocess(size=16)


def test_decompression_bombs_are_refused(tmp_path):
    bomb = _write(str(tmp_path / "bomb.png"), _png_claiming(100_000, 100_000))
    assert "decompression bomb" in image_problem(bomb)
    ds = ImageRowsDataset([bomb], None, eval_transform(_preprocess()))
    assert ds[0][1] is None, "a bomb that reaches decoding is skipped, not decoded"
    folder = make_class_images(str(tmp_path / "data"), COLOURS, per_class=2)
    _write(os.path.join(folder, "red", "bomb.png"), _png_claiming(100_000, 100_000))
    data = load_images(folder)
    assert [(os.path.basename(p), "decompression" in why) for p, why in data.skipped] == [("bomb.png", True)]
    with pytest.raises(hs.DataError, match="decompression bomb"):
        load_images(folder, strict=True)


odd_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
odd_bytes = st.one_of(
    st.binary(max_size=400),
    odd_text.map(lambda t: t.encode("utf-16")),  # another encoding
    odd_text.map(lambda t: t.encode("latin-1", errors="replace")),
    st.lists(st.tuples(odd_text, odd_text), max_size=6).map(  # a CSV with odd cells
        lambda rows: ("text,label\n" + "\n".join(f"{a},{b}" for a, b in rows)).encode("utf-8", "surrogatepass")),
    st.lists(st.one_of(odd_text, st.just('{"text": "hi", "label": "x"}'), st.just("[1, 2]"), st.just('{"text": 1}')),
             max_size=6).map(lambda lines: "\n".join(lines).encode()),
)


@FUZZ
@given(raw=odd_bytes, suffix=st.sampled_from([".csv", ".jsonl"]), task=st.sampled_from(["classification",
                                                                                         "regression",
                                                                                         "multilabel"]))
def test_malformed_tables_end_in_a_clear_error_or_counted_skips(raw, suffix, task):
    with tempfile.TemporaryDirectory() as root, no_hang():
        path = _write(os.path.join(root, "data" + suffix), raw)
        for load in (lambda: load_texts(path, task), lambda: load_images(path, task) if suffix == ".csv" else None):
            try:
                data = load()
            except HeadstartError as err:
                _one_line(err)
                continue
            if data is not None:
                assert len(data) >= 1 and len(data.targets) == len(data)


def _cli(*args: str) -> tuple[int, str]:
    """Run the CLI's own entry point in-process: its exit code and what it printed on stderr."""
    err = io.StringIO()
    from headstart import progress

    previous, progress.console.file = progress.console.file, err
    try:
        with mock.patch.object(sys, "argv", ["headstart", *args]), contextlib.redirect_stdout(io.StringIO()):
            main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        progress.console.file = previous
    return code, err.getvalue()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("fuzz")
    data = make_class_images(str(root / "train"), COLOURS, per_class=6)
    clf = hs.ImageClassifier(TINY, strategy="features", pretrained=False, image_size=TINY_SIZE, head_epochs=2,
                             verbose=False).fit(data)
    return clf.save(str(root / "model.hs"))


@FUZZ
@given(files=st.lists(bad_image, min_size=1, max_size=3))
def test_cli_predict_on_bad_images_reports_them_per_row(bundle, files):
    with tempfile.TemporaryDirectory() as root, no_hang():
        paths = [_write(os.path.join(root, f"x{i}.png"), data) for i, data in enumerate(files)]
        out = os.path.join(root, "pred.jsonl")
        code, err = _cli("predict", bundle, *paths, "--out", out, "--quiet")
        assert code == 0, err
        with open(out) as f:
            rows = [json.loads(line) for line in f]
        assert len(rows) == len(paths)
        assert all(r.get("error") or r.get("prediction") in COLOURS for r in rows)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | odd_text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
                          max_leaves=8)
bad_bundle = st.one_of(
    st.binary(max_size=512),
    st.dictionaries(st.sampled_from(["format", "format_version", "modality", "task", "backbone", "head", "labels",
                                     "backbone_trained", "params"]), json_value).map(
        lambda cfg: _zip({"config.json": json.dumps(cfg).encode(), "model.safetensors": b"\0" * 16})),
    st.binary(max_size=256).map(lambda b: _zip({"config.json": b, "model.safetensors": b})),
)


@FUZZ
@given(raw=bad_bundle, command=st.sampled_from(["predict", "evaluate"]))
def test_cli_refuses_malformed_bundles_in_one_line(bundle, raw, command):
    with tempfile.TemporaryDirectory() as root, no_hang():
        path = _write(os.path.join(root, "model.hs"), raw)
        image = _write(os.path.join(root, "a.png"), _png_bytes())
        code, err = _cli(command, path, image if command == "predict" else root, "--quiet")
        assert code == 2, err
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err


@FUZZ
@given(tweak=st.dictionaries(st.sampled_from(["modality", "task", "backbone", "head", "labels", "backbone_trained",
                                              "format_version", "target_scaling"]), json_value, min_size=1))
def test_a_real_bundle_with_a_tampered_config_is_refused_clearly(bundle, tweak):
    with zipfile.ZipFile(bundle) as zf:
        config, weights = json.loads(zf.read("config.json")), zf.read("model.safetensors")
    config.update(tweak)
    with tempfile.TemporaryDirectory() as root, no_hang():
        path = _write(os.path.join(root, "model.hs"), _zip({"config.json": json.dumps(config).encode(),
                                                           "model.safetensors": weights}))
        try:
            hs.load(path).predict(bundle.replace("model.hs", "train"))
        except HeadstartError as err:
            _one_line(err)


def _rezip_config(bundle: str, path: str, edit) -> str:
    with zipfile.ZipFile(bundle) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(members["config.json"])
    edit(config, members)
    members["config.json"] = json.dumps(config).encode()
    return _write(path, _zip(members))


def _reshape_head(config: dict, members: dict) -> None:
    from safetensors.numpy import load, save

    tensors = load(members["model.safetensors"])
    key = next(k for k in tensors if k.startswith("head") and tensors[k].ndim == 2)
    tensors[key] = np.zeros((tensors[key].shape[0] + 2, tensors[key].shape[1]), dtype=tensors[key].dtype)
    members["model.safetensors"] = save(tensors)


@pytest.mark.parametrize("edit, says", [
    (lambda config, _: config["head"].update(kind="quantum"), "unknown head 'quantum'"),
    (_reshape_head, "size mismatch for head"),
    # an image size of a million pixels a side would make the first prediction allocate terabytes
    (lambda config, _: config["backbone"]["preprocess"].update(size=1_000_000), "image size 1000000 is out of range"),
    (lambda config, _: config["backbone"]["preprocess"].update(std=[0, 1, 1]), "std above 0"),
])
def test_an_edited_bundle_is_named_with_what_is_wrong_and_the_fix(bundle, tmp_path, edit, says):
    # bench/reliability.py: an unknown head kind was refused without naming the bundle; weights of another shape
    # were reported as torch's header line ("Error(s) in loading state_dict for TransferModel:") alone.
    path = _rezip_config(bundle, str(tmp_path / "edited.hs"), edit)
    with pytest.raises(HeadstartError) as caught:
        hs.load(path)
    _one_line(caught.value)
    assert str(caught.value).startswith(path) and says in str(caught.value) and "re-save it" in str(caught.value)


def test_pipes_named_like_inputs_are_skipped_never_waited_on(bundle, tmp_path):
    # bench/reliability.py: a named pipe called pipe.png (or pipe.txt) in a data folder made fit and predict wait
    # forever on the open(); now it is left out of folder listings and an error row in predict's output.
    images = make_class_images(str(tmp_path / "images"), COLOURS, per_class=3)
    os.mkfifo(os.path.join(images, "red", "pipe.png"))
    texts = tmp_path / "texts"
    for label in ("pos", "neg"):
        for i in range(3):
            _write(str(texts / label / f"{i}.txt"), f"{label} text number {i}".encode())
    os.mkfifo(texts / "pos" / "pipe.txt")
    with no_hang():
        assert len(load_images(images)) == 9
        data = load_texts(str(texts))
        assert len(data) == 6 and [why for _, why in data.skipped] == [
            "not a regular file (a folder, pipe, socket or device)"]
        code, err = _cli("predict", bundle, images, "--out", str(tmp_path / "p.jsonl"), "--quiet")
        assert code == 0, err
        with open(tmp_path / "p.jsonl") as f:
            rows = [json.loads(line) for line in f]
        assert [r["error"] for r in rows if r["path"].endswith("pipe.png")] == ["unreadable image"]
        with pytest.raises(HeadstartError, match="pipe.png: not a regular file"):
            hs.load(bundle).predict([os.path.join(images, "red", "pipe.png")])


def test_a_pipe_given_as_the_data_table_is_refused_never_waited_on(tmp_path):
    # a named pipe called train.csv given to fit: opening it would wait for a writer forever
    table = tmp_path / "train.csv"
    os.mkfifo(table)
    with no_hang():
        with pytest.raises(HeadstartError, match="train.csv: not a regular file"):
            hs.TextClassifier(verbose=False).fit(str(table))
        code, err = _cli("fit", str(table), "--out", str(tmp_path / "run"), "--quiet")
        assert code == 2 and "not a regular file" in err and len(err.strip().splitlines()) == 1, err


def test_a_text_of_megabytes_in_a_csv_field_is_data_not_damage(bundle, tmp_path, monkeypatch):
    # bench/reliability.py: the csv module's default field limit (128 KB) refused a 5 MB text in `fit` as
    # "malformed CSV" and made `predict` on such a table end in a traceback.
    from headstart.data import labeled

    huge = "word " * 300_000  # 1.5 MB
    rows = [(f"short text {i}", "pos" if i % 2 else "neg") for i in range(6)] + [(huge, "pos")]
    table = _write(str(tmp_path / "texts.csv"), ("text,label\n" + "".join(
        f'"{t}",{label}\n' for t, label in rows)).encode())
    assert load_texts(table).items[-1] == huge
    image = _write(str(tmp_path / "a.png"), _png_bytes())
    listing = _write(str(tmp_path / "listing.csv"), f'path,note\na.png,"{huge}"\n'.encode())
    code, err = _cli("predict", bundle, listing, "--quiet")
    assert code == 0 and image, err
    # what stays refused, in one line naming the line: a field over the limit (an unclosed quote, as a rule)
    monkeypatch.setattr(labeled, "MAX_CSV_FIELD", 1000)
    with pytest.raises(HeadstartError, match=r"texts.csv, line \d+: a field over 1,000 characters"):
        load_texts(table)
    code, err = _cli("predict", bundle, listing, "--quiet")
    assert code == 2 and err.startswith("error:") and "a field over 1,000 characters" in err, err
