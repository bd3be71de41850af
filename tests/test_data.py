import os

import numpy as np
import pytest
from conftest import COLOURS, make_class_images

from headstart.data.images import load_images, read_image_csv, scan_image_folder
from headstart.data.labeled import stratified_split
from headstart.errors import DataError


def test_folder_per_class(colour_folder):
    data = scan_image_folder(colour_folder)
    assert data.classes == ["blue", "green", "red"]
    assert len(data) == 36 and data.class_counts() == {"blue": 12, "green": 12, "red": 12}
    assert not data.skipped


def test_corrupt_and_non_image_files_are_named_and_skipped(colour_folder):
    bad = os.path.join(colour_folder, "red", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    notes = os.path.join(colour_folder, "green", "notes.txt")
    with open(notes, "w") as f:
        f.write("hello")
    data = scan_image_folder(colour_folder)
    assert len(data) == 36
    assert sorted(p for p, _ in data.skipped) == sorted([bad, notes])
    with pytest.raises(DataError, match="broken.jpg|notes.txt"):
        scan_image_folder(colour_folder, strict=True)


def test_empty_class_is_refused(colour_folder):
    os.makedirs(os.path.join(colour_folder, "yellow"))
    with pytest.raises(DataError, match="class 'yellow' is empty"):
        scan_image_folder(colour_folder)


def test_class_with_only_unreadable_files_is_refused(colour_folder):
    os.makedirs(os.path.join(colour_folder, "yellow"))
    with open(os.path.join(colour_folder, "yellow", "x.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(DataError, match="class 'yellow' has no readable images"):
        scan_image_folder(colour_folder)


def test_single_class_is_refused(tmp_path):
    make_class_images(str(tmp_path), {"red": COLOURS["red"]}, 3)
    with pytest.raises(DataError, match="only one class"):
        scan_image_folder(str(tmp_path))


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_image_folder(str(tmp_path))


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(DataError, match="no such"):
        load_images(str(tmp_path / "nope"))


def _csv(tmp_path, text: str, encoding="utf-8") -> str:
    path = tmp_path / "labels.csv"
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_csv_with_relative_paths(colour_folder, tmp_path):
    rows = ["path,label"] + [f"train/{c}/{c}_{i}.png,{c}" for c in COLOURS for i in range(3)]
    data = read_image_csv(_csv(tmp_path, "\n".join(rows)))
    assert data.classes == ["blue", "green", "red"] and len(data) == 9
    assert all(os.path.isabs(p) and os.path.exists(p) for p in data.items)


def test_csv_missing_column_names_the_columns(tmp_path):
    with pytest.raises(DataError, match="missing column 'label' \\(found: path, target\\)"):
        read_image_csv(_csv(tmp_path, "path,target\na.png,1\n"))


def test_csv_nan_label_names_the_row(colour_folder, tmp_path):
    text = "path,label\ntrain/red/red_0.png,red\ntrain/red/red_1.png,NaN\n"
    with pytest.raises(DataError, match="line 3: missing label"):
        read_image_csv(_csv(tmp_path, text))


def test_csv_not_utf8_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="not UTF-8"):
        read_image_csv(_csv(tmp_path, "path,label\nbild.png,Größe\n", encoding="utf-16"))


def test_csv_regression_rejects_non_numbers(colour_folder, tmp_path):
    with pytest.raises(DataError, match="'heavy' is not a number"):
        read_image_csv(_csv(tmp_path, "path,label\ntrain/red/red_0.png,heavy\n"), task="regression")


def test_csv_multilabel(colour_folder, tmp_path):
    text = "path,label\ntrain/red/red_0.png,warm;bright\ntrain/blue/blue_0.png,cold\n"
    data = read_image_csv(_csv(tmp_path, text), task="multilabel")
    assert data.classes == ["bright", "cold", "warm"]
    assert data.targets.tolist() == [[1, 0, 1], [0, 1, 0]]


def test_stratified_split_keeps_proportions(tmp_path):
    make_class_images(str(tmp_path), {"a": (0, 0, 0), "b": (255, 255, 255)}, 5)
    make_class_images(str(tmp_path), {"c": (128, 0, 0)}, 20)
    data = scan_image_folder(str(tmp_path))
    train, val = stratified_split(data, 0.2, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == 30
    counts = np.bincount(data.targets[val], minlength=3)
    assert counts.tolist() == [1, 1, 4]
    assert stratified_split(data, 0.2, seed=0) == (train, val)


def test_split_refuses_a_class_of_one(tmp_path):
    make_class_images(str(tmp_path), {"a": (0, 0, 0)}, 1)
    make_class_images(str(tmp_path), {"b": (255, 255, 255)}, 5)
    with pytest.raises(DataError, match="class 'a' has 1 example"):
        stratified_split(scan_image_folder(str(tmp_path)), 0.2, seed=0)
