"""Reading prediction inputs lazily: files, folders walked a directory at a time, tables streamed row by row, so
`headstart predict` (predict_stream.py) and the exporter's parity checks (export.py) never list every input first.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator

from ..data.labeled import csv_dict_reader, csv_problem
from ..data.texts import TABLE_SUFFIXES, read_text_file
from ..errors import DataError


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
