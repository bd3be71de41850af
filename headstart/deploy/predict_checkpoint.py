"""Where an incremental prediction run stands: a small JSON file beside the output, rewritten atomically after
every batch, so an interrupted run knows exactly how many rows (and bytes) of its output are whole."""

from __future__ import annotations

import json
import os
from typing import TextIO

from ..errors import HeadstartError


class PredictCheckpoint:
    """`OUT.progress.json`: {"job", "rows", "bytes", "done"} for the output file OUT."""

    def __init__(self, out: str, job: dict) -> None:
        self.out, self.job = out, job
        self.path = out + ".progress.json"
        self.finished = False
        self._handle: TextIO | None = None

    def resume_point(self) -> int:
        """Rows already written by an earlier run of the same job (0 when there is nothing to resume)."""
        if not os.path.exists(self.out):
            return 0
        if not os.path.exists(self.path):
            raise HeadstartError(f"{self.out}: exists but has no {os.path.basename(self.path)} to resume from; "
                                 "run without --resume to start over")
        try:
            with open(self.path, encoding="utf-8") as f:
                state = json.load(f)
            rows, size = int(state["rows"]), int(state["bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            raise HeadstartError(f"{self.path}: damaged; delete it and {self.out} and run without --resume") from None
        if state.get("job") != self.job:
            raise HeadstartError(f"{self.out}: was written for other inputs or options ({self.path}); "
                                 "run without --resume to start over, or repeat the original command")
        if os.path.getsize(self.out) < size:
            raise HeadstartError(f"{self.out}: shorter than its progress record says; run without --resume")
        self.finished = bool(state.get("done"))
        self._resume_bytes = size
        return rows

    def open(self, skip: int) -> TextIO:
        """The output opened for appending after the last whole batch (a partial batch is cut off)."""
        if skip:
            with open(self.out, "r+b") as f:
                f.truncate(self._resume_bytes)
            self._handle = open(self.out, "a", encoding="utf-8", newline="")  # noqa: SIM115 (closed by the caller)
        else:
            folder = os.path.dirname(os.path.abspath(self.out))
            os.makedirs(folder, exist_ok=True)
            self._handle = open(self.out, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed by the caller)
            self._write(0, done=False)
        return self._handle

    def record(self, rows: int) -> None:
        self._write(rows, done=False)

    def finish(self, rows: int) -> None:
        self._write(rows, done=True)

    def _write(self, rows: int, done: bool) -> None:
        # Bytes come from the flushed handle: the record never claims more than the file holds.
        size = self._handle.tell() if self._handle is not None else 0
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"job": self.job, "rows": rows, "bytes": size, "done": done}, f)
        os.replace(tmp, self.path)
