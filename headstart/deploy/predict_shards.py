"""Prediction over many inputs by several processes (`torchrun` / `accelerate launch`): a part each, then one file.

Process r of N scores inputs r, r + N, r + 2N, ... (in the order `headstart predict` reads them, so no process
needs the whole list) into `OUT.part-r-of-N`, with that part's own progress record, so `--resume` continues each
part where it stopped. When every part is done, the first process interleaves them back into OUT in input order,
written to a temporary name and renamed (a reader sees no OUT or the whole of it), and removes the parts. Between
processes only the parts' row counts travel; one process runs `stream_predict` unchanged.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence

from ..distributed import device, gather_small, num_processes, rank, state
from .predict_stream import stream_predict


def part_path(out: str, r: int, world: int) -> str:
    return f"{out}.part-{r}-of-{world}"


def sharded_predict(est, inputs: Sequence[str], out: str | None = None, **options) -> dict:
    """stream_predict on this process's share of the inputs; with several processes and an `out`, one merged
    file in input order. Without `out` (rows on stdout) the first process alone predicts everything."""
    world = num_processes()
    if world == 1:
        return stream_predict(est, inputs, out, **options)
    if out is None:
        if rank() == 0:
            return stream_predict(est, inputs, None, **options)
        return {"rows": 0, "resumed_from": 0, "unreadable": 0, "done": True}
    mine = stream_predict(est, inputs, part_path(out, rank(), world), share=(rank(), world),
                          device=str(device()), **{**options, "stream": None})
    parts = gather_small(mine)  # also the barrier: every part is complete past this line
    if rank() == 0:
        merge_parts([part_path(out, r, world) for r in range(world)], out)
    state().wait_for_everyone()
    return {key: sum(p[key] for p in parts) for key in ("rows", "resumed_from", "unreadable")} | {
        "done": True, "processes": world}


def merge_parts(parts: list[str], out: str) -> None:
    """Interleave the parts' rows (part r holds rows r, r + N, ...) into `out`, atomically; then remove them.
    CSV is read as CSV (a text with a line break is one quoted field across lines), JSON lines as lines."""
    tmp = out + ".merging"
    handles = [open(p, encoding="utf-8", newline="") for p in parts]  # noqa: SIM115 (closed below)
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if out.endswith(".jsonl"):
                readers = [iter(h.readline, "") for h in handles]
                write = f.write
            else:
                readers = [csv.reader(h) for h in handles]
                writer = csv.writer(f, lineterminator="\n")
                header = [next(r, None) for r in readers][0]
                if header is not None:
                    writer.writerow(header)
                write = writer.writerow
            for row in interleaved(readers):
                write(row)
        os.replace(tmp, out)
    finally:
        for h in handles:
            h.close()
        if os.path.exists(tmp):
            os.remove(tmp)
    for p in parts:
        for path in (p, p + ".progress.json"):
            if os.path.exists(path):
                os.remove(path)


def interleaved(readers: list[Iterator]) -> Iterator:
    """Row 0 of the first part, row 0 of the second, ..., row 1 of the first, ...: the inputs' order again. The
    first part to run out ends it (earlier parts hold as many rows as later ones, or one more)."""
    while True:
        for reader in readers:
            row = next(reader, None)
            if row is None:
                return
            yield row
