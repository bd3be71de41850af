"""Streaming prediction: inputs of any number read lazily (predict_inputs.py), prepared in a background thread
while the model computes (batch_scorer.BatchScorer), written batch by batch; an interrupted run resumes where it
stopped.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TextIO

import numpy as np

from ..data.texts import _has_undecodable
from ..progress import make_progress
from .batch_scorer import BatchScorer
from .predict_checkpoint import PredictCheckpoint
from .predict_inputs import iter_inputs

if TYPE_CHECKING:
    from ..estimator import TransferEstimator


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
