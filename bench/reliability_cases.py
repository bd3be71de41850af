"""The hostile inputs bench/reliability.py throws at headstart, and the commands it throws them at.

Everything here is made with PIL, numpy, zipfile and json only: the runner forks its cases from a parent that has
imported torch but never run it (a forked child of a process whose thread pools started could hang on them), so
anything that needs the model is built by a case (the `setup` ones, run first).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

# The tiny randomly initialised backbone the tests use (tests/conftest.py): behaviour, not accuracy, is measured.
TINY = ["--backbone", "timm:test_efficientnet", "--scratch", "--image-size", "32", "--strategy", "features",
        "--head-epochs", "3", "-q"]
TEXT = ["--strategy", "baseline", "--modality", "text", "-q"]  # TF-IDF: the text loaders, no encoder to load
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
LOAD = ("import sys, headstart as hs\ntry:\n    hs.load({path!r})\nexcept hs.HeadstartError as err:\n"
        "    print(f'error: {{err}}', file=sys.stderr)\n    sys.exit(2)\n")


@dataclass
class Case:
    """One command (CLI arguments, or `python` source for the Python API) and what a correct answer is."""

    name: str
    group: str
    argv: list[str] | None = None
    python: str | None = None
    expect: str = "error"  # "error": a clean one-line error; "ok": exit 0 (e.g. bad files skipped and counted)
    protect: list[tuple[str, str]] = field(default_factory=list)  # (copy from, to): must be unchanged afterwards
    setup: bool = False  # builds what later cases need; run first, one at a time
    mention: str = ""  # for "ok" cases: what the output must say (the skipped file counted, the row's error)


# --- files --------------------------------------------------------------------------------------------------
def _png(size: int = 24, colour=(128, 128, 128), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side: int) -> bytes:
    """A real 1-bit PNG of side x side blank pixels: ~100 KB on disk at 30000, 2.7 GB once decoded to RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.compress(row * (side % 1000))
    idat += comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


BAD_IMAGES = {  # file name -> bytes
    "random_bytes.png": bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
    "truncated.png": _png(64)[: len(_png(64)) // 2],
    "bad_pixels.png": _png(64)[:60] + b"\x00" * (len(_png(64)) - 60),  # header whole, data zeroed
    "bomb_30000px.png": bomb_png(30000),
    "bomb_12000px.png": bomb_png(12000),  # over PIL's warning threshold, under its error one
    "text_as_image.jpg": b"this is a text file with an image extension\n" * 20,
    "html_as_image.png": b"<!doctype html><html><body>not found</body></html>",
    "empty.png": b"",
}


def write(path: str, data: bytes | str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def image_folder(root: str, per_class: int = 6, extra: dict[str, bytes] | None = None,
                 classes: dict | None = None) -> str:
    for c, colour in (classes or COLOURS).items():
        for i in range(per_class):
            write(os.path.join(root, c, f"{c}_{i}.png"), _png(24, colour, seed=i))
    for name, data in (extra or {}).items():
        write(os.path.join(root, "red", name), data)
    return root


def text_rows(n: int = 8) -> list[tuple[str, str]]:
    good = ["great product, works well", "love it, five stars", "excellent quality and fast delivery"]
    bad = ["broken on arrival, refund please", "terrible, never again", "poor quality and slow shipping"]
    return [(good[i % 3] + f" {i}", "pos") for i in range(n)] + [(bad[i % 3] + f" {i}", "neg") for i in range(n)]


def csv_bytes(rows: list[tuple[str, str]], header: str = "text,label") -> bytes:
    return (header + "\n" + "".join(f'"{t}",{label}\n' for t, label in rows)).encode()


# --- bundles: a real one, tampered ----------------------------------------------------------------------------
def _members(bundle: str) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def rezip(path: str, members: dict[str, bytes], deflate: tuple[str, ...] = ()) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data, zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED)
    return path


def tampered_config(bundle: str, path: str, edit) -> str:
    members = _members(bundle)
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    return rezip(path, members)


def zip_bomb(bundle: str, path: str, member: str = "model.safetensors", size: int = 512 << 20) -> str:
    """The member replaced by `size` bytes of zeros, deflated (~1000:1): tiny on disk, `size` once inflated."""
    members = _members(bundle)
    members[member] = bytes(size)
    return rezip(path, members, deflate=(member,))


def lying_zip(bundle: str, path: str, size: int = 256 << 20) -> str:
    """A deflated zero-filled weights member whose zip directory claims it is 1,000 bytes: the ratio check sees
    nothing odd, so only reading no further than the claimed size keeps memory bounded."""
    zip_bomb(bundle, path, size=size)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model.safetensors")
        start_dir = zf.start_dir
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    raw[info.header_offset + 22: info.header_offset + 26] = struct.pack("<I", 1000)  # local header
    at, name = start_dir, info.filename.encode()
    while True:  # its central directory entry
        at = raw.index(b"PK\x01\x02", at)
        if raw[at + 46: at + 46 + struct.unpack("<H", raw[at + 28: at + 30])[0]] == name:
            break
        at += 4
    raw[at + 24: at + 28] = struct.pack("<I", 1000)
    return write(path, bytes(raw))


def renamed_member(bundle: str, path: str) -> str:
    members = _members(bundle)
    members["weights.safetensors"] = members.pop("model.safetensors")
    return rezip(path, members)


def replaced_member(bundle: str, path: str, member: str, data: bytes) -> str:
    members = _members(bundle)
    members[member] = data
    return rezip(path, members)


def truncated(bundle: str, path: str) -> str:
    with open(bundle, "rb") as f:
        return write(path, f.read()[: os.path.getsize(bundle) // 2])


def weights_reshaped(bundle: str, path: str) -> str:
    """A head weight of another shape, in a well-formed safetensors file: the config and the weights disagree."""
    from safetensors.numpy import load, save

    members = _members(bundle)
    tensors = load(members["model.safetensors"])
    key = next(k for k in tensors if k.startswith("head") and tensors[k].ndim == 2)
    tensors[key] = np.zeros((tensors[key].shape[0] + 2, tensors[key].shape[1]), dtype=tensors[key].dtype)
    members["model.safetensors"] = save(tensors)
    return rezip(path, members)


# --- the cases ----------------------------------------------------------------------------------------------
def setup_cases(root: str) -> list[Case]:
    """Good runs whose outputs the other cases tamper with or must not lose."""
    train = image_folder(os.path.join(root, "data", "train"))
    texts = write(os.path.join(root, "data", "texts.csv"), csv_bytes(text_rows()))
    inputs = image_folder(os.path.join(root, "data", "inputs"), per_class=2)
    good = os.path.join(root, "good")
    return [
        Case("fit a tiny image model", "setup", ["fit", train, "--out", os.path.join(good, "image"), *TINY],
             expect="ok", setup=True),
        Case("fit a TF-IDF text model", "setup", ["fit", texts, "--out", os.path.join(good, "text"), *TEXT],
             expect="ok", setup=True),
        Case("predict good images to CSV", "setup", ["predict", os.path.join(good, "image", "model.hs"), inputs,
                                                      "--out", os.path.join(good, "predictions.csv"), "-q"],
             expect="ok", setup=True),
    ]


def image_cases(root: str, bundle: str) -> list[Case]:
    bad = os.path.join(root, "bad_images")
    for name, data in BAD_IMAGES.items():
        write(os.path.join(bad, name), data)
    cases = []
    for name in BAD_IMAGES:  # one bad file among good ones: skipped and counted by fit, an error row by predict
        folder = image_folder(os.path.join(root, "fit_with", name), extra={name: BAD_IMAGES[name]})
        cases.append(Case(f"fit: folder with {name}", "images", ["fit", folder, "--out", os.path.join(
            root, "runs", name), *TINY], expect="ok"))
        cases.append(Case(f"predict: {name}", "images", ["predict", bundle, os.path.join(bad, name), "-q"],
                          expect="ok", mention="unreadable image"))
    fifo = image_folder(os.path.join(root, "fit_with", "fifo"))
    os.mkfifo(os.path.join(fifo, "red", "pipe.png"))  # opening it to read blocks until a writer comes: never
    pretrain = image_folder(os.path.join(root, "pretrain"), per_class=3, extra=BAD_IMAGES)
    os.mkfifo(os.path.join(pretrain, "red", "pipe.png"))
    cases += [
        Case("fit: folder with a named pipe called pipe.png", "images", ["fit", fifo, "--out", os.path.join(
            root, "runs", "fifo"), *TINY], expect="ok"),
        Case("predict: folder with a named pipe called pipe.png", "images", ["predict", bundle, fifo, "-q"],
             expect="ok", mention="unreadable image"),
        Case("fit --unlabeled: every bad image and a pipe", "images", ["fit", os.path.join(root, "data", "train"),
                                                                      "--unlabeled", pretrain, "--adapt", "adabn",
                                                                      "--out", os.path.join(root, "runs", "adapt"),
                                                                      *TINY], expect="ok"),
        Case("pretrain: every bad image and a pipe", "images", ["pretrain", pretrain, "--backbone",
                                                                "timm:test_efficientnet", "--scratch", "--image-size",
                                                                "32", "--epochs", "1", "--batch-size", "8", "-q",
                                                                "--out", os.path.join(root, "runs", "pretrain")],
             expect="ok"),
    ]
    strict = os.path.join(root, "fit_with", "truncated.png")
    only_bad = image_folder(os.path.join(root, "only_bad"), per_class=0, extra=BAD_IMAGES)
    image_folder(only_bad, per_class=3, classes={"green": COLOURS["green"], "blue": COLOURS["blue"]})
    csv_listing = write(os.path.join(root, "listing.csv"), "path,label\n" + "".join(
        f"bad_images/{n},x\n" for n in BAD_IMAGES) + "missing.png,y\n")
    cases += [
        Case("fit --strict: truncated image", "images", ["fit", strict, "--strict", "--out", os.path.join(
            root, "runs", "strict"), *TINY]),
        Case("fit: a class of only unreadable files", "images", ["fit", only_bad, *TINY, "--out", os.path.join(
            root, "runs", "only_bad")]),
        Case("fit: CSV listing only bad or missing images", "images", ["fit", csv_listing, *TINY, "--out",
                                                                      os.path.join(root, "runs", "listing")]),
        Case("predict: folder of every bad image", "images", ["predict", bundle, bad, "-q"], expect="ok",
             mention="unreadable image"),
        Case("evaluate: folder with a decompression bomb", "images", ["evaluate", bundle, os.path.join(
            root, "fit_with", "bomb_30000px.png"), "-q"], expect="ok"),
    ]
    return cases


def text_cases(root: str, bundle: str) -> list[Case]:
    d = os.path.join(root, "texts")
    rows = text_rows()
    bad_utf8 = write(os.path.join(d, "bad_utf8.csv"), csv_bytes(rows) + b'"caf\xe9 \xff\xfe broken",pos\n')
    folder = os.path.join(d, "folder")
    for i, (text, label) in enumerate(rows):
        write(os.path.join(folder, label, f"{i}.txt"), text)
    # a UTF-16 byte order mark declares the encoding; the bytes after it are a lone surrogate, invalid in UTF-16 too
    write(os.path.join(folder, "pos", "utf16_broken.txt"), b"\xff\xfe" + "ok ".encode("utf-16-le") + b"\x00\xd8")
    write(os.path.join(folder, "neg", "latin1.txt"), "na\xefve r\xe9sum\xe9, d\xe9j\xe0 vu".encode("latin-1"))
    os.mkfifo(os.path.join(folder, "neg", "pipe.txt"))
    huge = "word " * (1 << 20)  # 5 MB in one field: over the csv module's default field limit (128 KB)
    oversized = write(os.path.join(d, "oversized.csv"), csv_bytes([*rows, (huge, "pos")]))
    oversized_jsonl = write(os.path.join(d, "oversized.jsonl"), "".join(
        json.dumps({"text": t, "label": label}) + "\n" for t, label in [*rows, (huge, "neg")]))
    strict = ["--strict"]
    return [
        Case("fit: CSV rows with bytes invalid in UTF-8", "texts", ["fit", bad_utf8, *TEXT, "--out",
                                                                   os.path.join(root, "runs", "t1")], expect="ok"),
        Case("fit --strict: CSV rows invalid in UTF-8", "texts", ["fit", bad_utf8, *TEXT, *strict, "--out",
                                                                 os.path.join(root, "runs", "t2")]),
        Case("fit: .txt files invalid in UTF-8, in their BOM's UTF-16; a pipe", "texts",
             ["fit", folder, *TEXT, "--out", os.path.join(root, "runs", "t3")], expect="ok"),
        Case("predict: .txt invalid in its declared UTF-16", "texts",
             ["predict", bundle, os.path.join(folder, "pos", "utf16_broken.txt"), "-q"], expect="ok",
             mention="unusable text"),
        Case("fit: a 5 MB text in one CSV row", "texts", ["fit", oversized, *TEXT, "--out",
                                                          os.path.join(root, "runs", "t4")], expect="ok"),
        Case("fit: a 5 MB text in one JSONL row", "texts", ["fit", oversized_jsonl, *TEXT, "--out",
                                                            os.path.join(root, "runs", "t5")], expect="ok"),
        Case("predict: a 5 MB text in one CSV row", "texts", ["predict", bundle, oversized, "-q"], expect="ok"),
        Case("fit: NUL bytes inside a CSV text", "texts", ["fit", write(os.path.join(d, "nul.csv"), csv_bytes(
            rows) + b'"a\x00b",pos\n'), *TEXT, "--out", os.path.join(root, "runs", "t6")], expect="ok"),
    ]


def table_cases(root: str) -> list[Case]:
    d = os.path.join(root, "tables")
    rows = text_rows()
    files = {
        "missing label column": ("no_label.csv", b"text\nhello\nworld\n"),
        "NaN labels": ("nan_labels.csv", csv_bytes(rows) + b'"more text",NaN\n'),
        "empty labels": ("empty_labels.csv", csv_bytes(rows) + b'"more text",\n'),
        "one class only": ("one_class.csv", csv_bytes([r for r in rows if r[1] == "pos"])),
        "ragged rows": ("ragged.csv", csv_bytes(rows) + b'"short row"\n"long",pos,extra,fields\n'),
        "empty file (CSV)": ("empty.csv", b""),
        "empty file (JSONL)": ("empty.jsonl", b""),
        "header only": ("header.csv", b"text,label\n"),
        "unclosed quote": ("quote.csv", csv_bytes(rows) + b'"never closed,pos\n'),
        "JSONL line not an object": ("list.jsonl", b'{"text": "a", "label": "x"}\n[1, 2]\n'),
        "JSONL invalid JSON": ("broken.jsonl", b'{"text": "a", "label": "x"}\n{"text": \n'),
        "Parquet of garbage": ("garbage.parquet", b"PAR1" + bytes(100)),
        "numeric labels, one row infinite (regression)": ("inf.csv", b"text,label\na,1\nb,2\nc,inf\n"),
    }
    cases = []
    for what, (name, data) in files.items():
        task = ["--task", "regression"] if "regression" in what else []
        cases.append(Case(f"fit: {what}", "tables", ["fit", write(os.path.join(d, name), data), *TEXT, *task,
                                                      "--out", os.path.join(root, "runs", name)]))
    empty_class = image_folder(os.path.join(d, "empty_class"))
    os.makedirs(os.path.join(empty_class, "purple"))
    cases.append(Case("fit: an empty class folder", "tables", ["fit", empty_class, *TINY, "--out",
                                                               os.path.join(root, "runs", "empty_class")]))
    one = image_folder(os.path.join(d, "one_class"), classes={"red": COLOURS["red"]})
    cases.append(Case("fit: one class folder", "tables", ["fit", one, *TINY, "--out",
                                                          os.path.join(root, "runs", "one_class")]))
    return cases


def bundle_cases(root: str, bundle: str, inputs: str) -> list[Case]:
    d = os.path.join(root, "bundles")
    os.makedirs(d, exist_ok=True)
    p = lambda name: os.path.join(d, name)  # noqa: E731
    made = {
        "zip bomb (512 MB of weights in 0.5 MB)": zip_bomb(bundle, p("bomb.hs")),
        "zip bomb (config.json of 64 MB)": zip_bomb(bundle, p("config_bomb.hs"), "config.json", 64 << 20),
        "zip directory understating a member's size": lying_zip(bundle, p("lying.hs")),
        "newer bundle format version": tampered_config(bundle, p("newer.hs"), lambda c: c.update(format_version=99)),
        "config missing 'head'": tampered_config(bundle, p("no_head.hs"), lambda c: c.pop("head")),
        "config 'labels' of the wrong type": tampered_config(bundle, p("labels.hs"),
                                                             lambda c: c.update(labels="red")),
        "config backbone of unknown source": tampered_config(bundle, p("bb.hs"), lambda c: c["backbone"].update(
            source="nowhere")),
        "config backbone not a spec": tampered_config(bundle, p("bb2.hs"), lambda c: c.update(backbone={"x": 1})),
        "config head of unknown kind": tampered_config(bundle, p("head.hs"), lambda c: c["head"].update(
            kind="quantum")),
        "config.json not JSON": replaced_member(bundle, p("json.hs"), "config.json", b"{not json"),
        "member renamed (model.safetensors)": renamed_member(bundle, p("renamed.hs")),
        "weights not safetensors": replaced_member(bundle, p("weights.hs"), "model.safetensors", b"\x80\x04K\x01."),
        "weights of another shape": weights_reshaped(bundle, p("reshaped.hs")),
        "member name escaping its folder": replaced_member(bundle, p("escape.hs"), "backbone/../../evil", b"x"),
        "truncated bundle": truncated(bundle, p("truncated.hs")),
        "not a zip (a pickle)": write(p("pickle.hs"), b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."),
        "empty file": write(p("empty.hs"), b""),
    }
    cases = []
    for what, path in made.items():
        cases.append(Case(f"predict: {what}", "bundles", ["predict", path, inputs, "-q"]))
        cases.append(Case(f"hs.load: {what}", "bundles", python=LOAD.format(path=path)))
    cases.append(Case("evaluate: zip bomb bundle", "bundles", ["evaluate", made[next(iter(made))], inputs, "-q"]))
    return cases


def lost_output_cases(root: str, good: str, inputs: str) -> list[Case]:
    """Failing runs pointed at outputs a good run wrote: those must survive the failure unchanged."""
    d = os.path.join(root, "kept")
    bundle, preds = os.path.join(good, "image", "model.hs"), os.path.join(good, "predictions.csv")
    run = os.path.join(good, "image")
    one_class = image_folder(os.path.join(root, "kept_data", "one"), classes={"red": COLOURS["red"]})
    keep_run = lambda to: [(os.path.join(run, f), os.path.join(to, f)) for f in ("model.hs", "metrics.jsonl")]  # noqa: E731
    cases = [
        Case("predict --out over earlier results: an input missing", "lost output",
             ["predict", bundle, inputs, os.path.join(root, "no_such_file.png"), "--out", p1 := os.path.join(
                 d, "p1", "predictions.csv"), "-q"], protect=[(preds, p1)]),
        Case("predict --out over earlier results: a damaged bundle", "lost output",
             ["predict", os.path.join(root, "bundles", "truncated.hs"), inputs, "--out", p2 := os.path.join(
                 d, "p2", "predictions.csv"), "-q"], protect=[(preds, p2)]),
        Case("predict --out over earlier results: a table without the column", "lost output",
             ["predict", bundle, os.path.join(root, "tables", "no_label.csv"), "--out", p3 := os.path.join(
                 d, "p3", "predictions.csv"), "-q"], protect=[(preds, p3)]),
        Case("predict --resume: damaged progress file", "lost output",
             ["predict", bundle, inputs, "--resume", "--out", p4 := os.path.join(d, "p4", "predictions.csv"), "-q"],
             protect=[(preds, p4), (os.path.join(root, "tables", "broken.jsonl"), p4 + ".progress.json")]),
        Case("fit --out over an earlier run: one class only", "lost output",
             ["fit", one_class, "--out", r1 := os.path.join(d, "r1"), *TINY], protect=keep_run(r1)),
        Case("fit --out over an earlier run: bad backbone", "lost output",
             ["fit", inputs, "--out", r2 := os.path.join(d, "r2"), *TINY[:-1], "--backbone", "no_such_net", "-q"],
             protect=keep_run(r2)),
        Case("extend --out over a bundle: one class of bad data", "lost output",
             ["extend", bundle, os.path.join(root, "only_bad"), "--out", e1 := os.path.join(d, "e1", "model.hs"),
              "-q"], protect=[(bundle, e1)]),
    ]
    return cases
