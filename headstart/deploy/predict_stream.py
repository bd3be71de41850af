"""Streaming prediction: inputs of any number read lazily, prepared in a background thread while the model
computes, written batch by batch; an interrupted run resumes where it stopped.

`BatchScorer` is the one prediction path shared by `headstart predict`, the HTTP server and ONNX parity checks:
prepare one input (decode + resize, or validate a text), collate a batch, run it on torch or onnxruntime.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import queue
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TextIO

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from ..data.images import _INTERP
from ..data.labeled import csv_dict_reader, csv_problem
from ..data.texts import TABLE_SUFFIXES, _has_undecodable, read_text_file
from ..errors import DataError, HeadstartError
from ..scoring import scoring_graph

if TYPE_CHECKING:
    from ..estimator import TransferEstimator
from ..data import fashion_mnist
from ..methods.classical import predict_proba_full
from ..progress import make_progress
from .predict_checkpoint import PredictCheckpoint

SAMPLE_TEXTS = [  # parity checks for text models when the user gives none: ordinary sentences of mixed length
    "The delivery arrived two days late and the box was damaged.",
    "I love this phone, the battery lasts all day!",
    "Meeting moved to Thursday at 3pm, please update your calendars.",
    "What a game last night",
    "The new policy takes effect next month and applies to every employee in the company, including contractors.",
    "ok",
]


class BatchScorer:
    """Inputs -> scores for a fitted estimator, on its torch model or on an attached onnxruntime session."""

    def __init__(self, est: TransferEstimator, device: str | None = None) -> None:
        self.est, self.modality = est, est.modality
        self.onnx = getattr(est, "runtime_", None)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.graph = None
        if self.onnx is None:
            self.graph = scoring_graph(est, features_for_classical=True).to(self.device)
        if self.modality == "image":
            pre = est.spec_.preprocess
            # The graph normalises; outside it only what depends on each image's size: resize and crop.
            self.transform = T.Compose([T.Resize(pre.resize, interpolation=_INTERP[pre.interpolation], antialias=True),
                                        T.CenterCrop(pre.size), T.ToImage(), T.ToDtype(torch.float32, scale=True)])
        else:
            self.tokenizer = est.model_.backbone.tokenizer
            self.max_length = est.spec_.preprocess.max_length

    def prepare(self, item):
        """One input ready to batch (a [0, 1] tensor, or the text), or None when it cannot be used."""
        if self.modality == "text":
            usable = isinstance(item, str) and item.strip() and not _has_undecodable(item)
            return item if usable else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                if isinstance(item, Image.Image):  # convert() copies even an RGB image: a full-size copy saved
                    return self.transform(item if item.mode == "RGB" else item.convert("RGB"))
                if not os.path.isfile(item):  # a pipe or device named like an image: opening it may never return
                    return None
                with Image.open(item) as img:
                    return self.transform(img.convert("RGB"))
        except Exception:  # PIL raises many types; each means "not an image we can read"
            return None

    def collate(self, prepared: list) -> dict:
        if self.modality == "image":
            return {"pixels": torch.stack(prepared)}
        enc = self.tokenizer(prepared, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def run(self, batch: dict) -> np.ndarray:
        """Scores (what predict_proba returns) for a collated batch."""
        if self.onnx is not None:
            return self.onnx.run(batch).astype(np.float64)
        with torch.inference_mode():
            out = self.graph(*(v.to(self.device) for v in batch.values())).float().cpu().numpy()
        if getattr(self.est, "classical_", None) is not None:
            return predict_proba_full(self.est.classical_, out, len(self.est.classes_)).astype(np.float64)
        return out.astype(np.float64)

    def score(self, items: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ok) for a small list: rows of unusable inputs are NaN with ok False."""
        return self.score_prepared([self.prepare(x) for x in items])

    def score_prepared(self, prepared: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """`score` for inputs `prepare` has already made ready (None: unusable)."""
        ok = np.array([p is not None for p in prepared], dtype=bool)
        scores = np.full((len(prepared), self.n_outputs), np.nan)
        if ok.any():
            scores[ok] = self.run(self.collate([p for p in prepared if p is not None]))
        return scores, ok

    @property
    def n_outputs(self) -> int:
        return 1 if self.est._task == "regression" else len(self.est.classes_)


def default_check_inputs(est: TransferEstimator) -> list:
    """Real inputs for a parity check when the user names none: Fashion-MNIST test images, or sample texts."""
    if est.modality == "text":
        return list(SAMPLE_TEXTS)

    if not fashion_mnist.available():
        raise HeadstartError("no images to check the export on: pass some with --check (files or a folder)")
    x, _ = fashion_mnist.load_split("test")
    return [Image.fromarray(x[i]) for i in range(8)]


# --- reading inputs lazily --------------------------------------------------------------------------------
def _table_rows(path: str, column: str) -> Iterator[str]:
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        if column not in table.schema_arrow.names:
            raise DataError(f"{path}: no '{column}' column (found {table.schema_arrow.names}); name it with --column")
        for batch in table.iter_batches(columns=[column], batch_size=4096):
            yield from ("" if v is None else str(v) for v in batch.column(0).to_pylist())
        return
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        if suffix == ".csv":
            reader = csv_dict_reader(f)
            try:
                if column not in (reader.fieldnames or []):
                    raise DataError(f"{path}: no '{column}' column (found {reader.fieldnames}); name it with --column")
                yield from (row.get(column) or "" for row in reader)
            except csv.Error as err:
                raise csv_problem(path, reader, err) from None
            return
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {line_no}: invalid JSON ({err.msg}); fix or remove that line") from None
            yield "" if not isinstance(row, dict) or row.get(column) is None else str(row[column])


def walk_files(folder: str) -> Iterator[str]:
    """Visible files under `folder`, folders and files sorted, yielded one directory at a time: the order of
    `headstart fit`'s folder scan without holding the whole tree's paths in memory."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (os.path.join(root, f) for f in sorted(files) if not f.startswith("."))


def iter_inputs(modality: str, inputs: Iterable[str], column: str | None = None) -> Iterator[str]:
    """Every input named, in a stable order, without listing them all first: folders walk lazily, tables stream.

    Images: files, folders, or tables of paths (relative to the table). Texts: .txt files, folders of them,
    tables (their text column), or the texts themselves.
    """
    column = column or ("text" if modality == "text" else "path")
    for item in inputs:
        item = os.fspath(item)
        is_file = "\n" not in item and os.path.isfile(item)
        if is_file and item.lower().endswith(TABLE_SUFFIXES):
            base = os.path.dirname(os.path.abspath(item))
            rows = _table_rows(item, column)
            yield from (rows if modality == "text" else (os.path.join(base, r.strip()) for r in rows))
        elif modality == "text":
            if is_file:
                yield read_text_file(item) or ""
            elif os.path.isdir(item):
                yield from (read_text_file(p) or "" for p in walk_files(item) if p.endswith(".txt"))
            else:
                yield item
        elif os.path.isdir(item):
            yield from walk_files(item)
        elif is_file:
            yield item
        elif os.path.exists(item):
            raise DataError(f"{item}: not a regular file (a pipe, socket or device); name image files or folders")
        else:
            raise DataError(f"{item}: no such file or folder")


# --- rows -------------------------------------------------------------------------------------------------
def row_fields(est: TransferEstimator, with_probs: bool) -> list[str]:
    key = "text" if est.modality == "text" else "path"
    probs = [f"p_{c}" for c in est.classes_] if with_probs and est._task != "regression" else []
    return [key, "prediction", "score", "error", *probs]


def format_row(est: TransferEstimator, item: str, scores: np.ndarray, good: bool, with_probs: bool) -> dict:
    """One output row: input, prediction, score (and per-class probabilities); `error` if unusable."""
    key, what = ("text", "unusable text") if est.modality == "text" else ("path", "unreadable image")
    r: dict = {key: item, "prediction": "", "score": "", "error": "" if good else what}
    if good:
        decoded = est._decode(scores)
        if est._task == "classification":
            r["prediction"], r["score"] = decoded, round(float(scores.max()), 6)
        elif est._task == "multilabel":
            r["prediction"] = ";".join(decoded)
        else:
            r["prediction"] = round(decoded, 6)
    if with_probs and est._task != "regression":
        for c, p in zip(est.classes_, scores):
            r[f"p_{c}"] = round(float(p), 6) if good else ""
    return r


def render_rows(rows: list[dict], fields: list[str], fmt: str, header: bool = False) -> str:
    """Rows as JSON lines or CSV; `header` puts the CSV header first, quoted by the same writer as the rows, so a
    class name with a comma or a quote (in its `p_` column) keeps the columns aligned."""
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# --- the pipeline -----------------------------------------------------------------------------------------
_END = object()


def prepared_batches(scorer: BatchScorer, items: Iterator, batch_size: int, depth: int = 3) -> Iterator:
    """(inputs, ok mask, collated batch or None), made by a background thread `depth` batches ahead.

    Decoding and resizing images (PIL releases the GIL) or tokenizing overlaps the model's compute.
    """
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            with ThreadPoolExecutor(max_workers=2) as pool:
                chunk: list = []
                for item in items:
                    chunk.append(item)
                    if len(chunk) == batch_size:
                        _put(out, stop, _prepare_chunk(scorer, pool, chunk))
                        chunk = []
                    if stop.is_set():
                        return
                if chunk:
                    _put(out, stop, _prepare_chunk(scorer, pool, chunk))
            _put(out, stop, _END)
        except BaseException as err:  # handed to the consumer, which raises it in the main thread
            _put(out, stop, err)

    worker = threading.Thread(target=produce, name="headstart-prefetch", daemon=True)
    worker.start()
    try:
        while (got := out.get()) is not _END:
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        while not out.empty():  # unblock a producer waiting on a full queue
            out.get_nowait()


def _put(out: queue.Queue, stop: threading.Event, value) -> None:
    while not stop.is_set():
        try:
            out.put(value, timeout=0.1)
            return
        except queue.Full:
            continue


def _prepare_chunk(scorer: BatchScorer, pool: ThreadPoolExecutor, chunk: list):
    prepared = list(pool.map(scorer.prepare, chunk)) if scorer.modality == "image" else [
        scorer.prepare(x) for x in chunk]
    ok = np.array([p is not None for p in prepared], dtype=bool)
    batch = scorer.collate([p for p in prepared if p is not None]) if ok.any() else None
    return chunk, ok, batch


def score_batches(scorer: BatchScorer, items: Iterator, batch_size: int) -> Iterator:
    """(inputs, scores with NaN rows for unusable inputs, ok mask) per batch."""
    for chunk, ok, batch in prepared_batches(scorer, items, batch_size):
        scores = np.full((len(chunk), scorer.n_outputs), np.nan)
        if batch is not None:
            scores[ok] = scorer.run(batch)
        yield chunk, scores, ok


def score_items(est: TransferEstimator, items: Sequence, verbose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scores for a list of inputs through the streaming pipeline (used when a bundle runs on onnxruntime)."""
    scorer = BatchScorer(est)
    parts, oks = [np.zeros((0, scorer.n_outputs))], [np.zeros(0, dtype=bool)]
    with make_progress(verbose) as bar:
        task = bar.add_task("predict", total=len(items), info="")
        for chunk, scores, ok in score_batches(scorer, iter(items), est.batch_size):
            parts.append(scores)
            oks.append(ok)
            bar.update(task, advance=len(chunk))
    return np.concatenate(parts), np.concatenate(oks)


def stream_predict(est: TransferEstimator, inputs: Sequence[str], out: str | None = None, *, with_probs: bool = False,
                   resume: bool = False, batch_size: int | None = None, column: str | None = None,
                   verbose: bool = True, stream: TextIO | None = None, share: tuple[int, int] | None = None,
                   device: str | None = None) -> dict:
    """Predict every input and write rows as each batch finishes: to `out` (.csv or .jsonl) or to `stream`.

    A side file `OUT.progress.json` records rows and bytes written after each batch; `resume=True` truncates any
    partial batch and skips the inputs already written. Returns {"rows", "resumed_from", "unreadable", "done"}.
    `share=(r, n)`: only inputs r, r + n, r + 2n, ... (one process's part, predict_shards.py).
    """
    fmt = "jsonl" if out and out.endswith(".jsonl") else "csv"
    fields = row_fields(est, with_probs)
    job = {"inputs": [os.path.abspath(i) if os.path.exists(i) else i for i in inputs], "fields": fields,
           "format": fmt, **({"share": list(share)} if share else {})}
    checkpoint = PredictCheckpoint(out, job) if out else None
    skip = checkpoint.resume_point() if (checkpoint and resume) else 0
    if checkpoint and checkpoint.finished:
        return {"rows": skip, "resumed_from": skip, "unreadable": 0, "done": True}
    handle = None if checkpoint else (stream or sys.stdout)

    def output() -> TextIO:
        # --out is opened (a fresh run truncates it) once the first batch is scored: a run that fails before that
        # (an input missing, a table without the column) leaves an earlier run's output as it was.
        nonlocal handle
        if handle is None:
            handle = checkpoint.open(skip)
            if skip == 0 and fmt == "csv":
                handle.write(render_rows([], fields, fmt, header=True))
        return handle

    if handle is not None and fmt == "csv":
        handle.write(render_rows([], fields, fmt, header=True))
    items = iter_inputs(est.modality, inputs, column)
    if share is not None:
        items = itertools.islice(items, share[0], None, share[1])
    for _ in range(skip):
        next(items, None)
    scorer = BatchScorer(est, device)
    rows, bad = skip, 0
    try:
        with make_progress(verbose) as bar:
            task = bar.add_task("predict", total=None, completed=skip, info="")
            for chunk, scores, ok in score_batches(scorer, items, batch_size or est.batch_size):
                shown = [_shown(x) for x in chunk]
                target = output()
                target.write(render_rows([format_row(est, x, s, k, with_probs)
                                          for x, s, k in zip(shown, scores, ok)], fields, fmt))
                target.flush()
                rows += len(chunk)
                bad += int((~ok).sum())
                if checkpoint:
                    checkpoint.record(rows)
                bar.update(task, completed=rows, info=f"{bad} unusable" if bad else "")
        if checkpoint:
            output()  # no inputs at all: the output is still written (a CSV header)
            checkpoint.finish(rows)
    finally:
        if checkpoint and handle is not None:
            handle.close()
    return {"rows": rows, "resumed_from": skip, "unreadable": bad, "done": True}


def _shown(item: str) -> str:
    """Undecodable bytes read from a table become U+FFFD in the output, which must itself be valid UTF-8."""
    if not _has_undecodable(item):
        return item
    return item.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
