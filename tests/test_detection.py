"""Object detection: box readers and their errors, the tiling rule, the pyramid on registry backbones, strategies
in the shared loop, mAP, and fit -> save -> load -> predict on synthetic squares and bars."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import TINY
from detection_data import make_box_images
from PIL import Image

import headstart as hs
from headstart.detection.data import Labelled, cut, read_boxes, read_coco, read_csv, read_voc, tile, windows
from headstart.detection.metrics import box_map
from headstart.detection.model import DetectionLoss, DetectorModel, choose_levels
from headstart.errors import DataError
from headstart.strategies import get_strategy
from headstart.train import LoopConfig, run_stage


def _write_voc(folder: str, image: str, size: tuple[int, int], objects: list[tuple[str, list[int]]]) -> None:
    parts = [f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
             f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects]
    xml = (f"<annotation><filename>{image}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
           f"</size>{''.join(parts)}</annotation>")
    with open(os.path.join(folder, os.path.splitext(image)[0] + ".xml"), "w") as f:
        f.write(xml)


def test_csv_voc_and_coco_read_the_same_boxes(tmp_path):
    csv_path = make_box_images(str(tmp_path), 3, negatives=1)
    from_csv = {os.path.basename(x.path): x for x in read_csv(csv_path)}
    assert len(from_csv["img3.png"].boxes) == 0  # the negative is kept, with no box
    coco = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "square"}, {"id": 9, "name": "bar"}]}
    for i, (name, item) in enumerate(sorted(from_csv.items())):
        _write_voc(str(tmp_path), name, (64, 64), [(lab, b.astype(int).tolist()) for lab, b in zip(item.labels,
                                                                                              item.boxes)])
        coco["images"].append({"id": i, "file_name": name, "width": 64, "height": 64})
        for lab, (x1, y1, x2, y2) in zip(item.labels, item.boxes.tolist()):
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": i, "bbox": [x1, y1, x2 - x1,
                                        y2 - y1], "category_id": 7 if lab == "square" else 9})
    with open(tmp_path / "coco.json", "w") as f:
        json.dump(coco, f)
    for other in (read_voc(str(tmp_path)), read_coco(str(tmp_path / "coco.json")), read_boxes(str(tmp_path))):
        assert {os.path.basename(x.path) for x in other} == set(from_csv)
        for x in other:
            ref = from_csv[os.path.basename(x.path)]
            np.testing.assert_allclose(x.boxes, ref.boxes)
            assert x.labels == ref.labels and (x.width, x.height) == (64, 64)


@pytest.mark.parametrize("row, message", [
    ("img0.png,10,10,80,20,square", "line 2: box (10, 10, 80, 20) lies outside the image img0.png (64x64)"),
    ("img0.png,10,10,20,20,", "line 2: empty label"),
    ("img0.png,20,10,10,20,square", "line 2: box (20, 10, 10, 20) has no area"),
    ("bad.png,1,1,5,5,square", "bad.png: unreadable image"),
    ("gone.png,1,1,5,5,square", "gone.png: image not found"),
])
def test_bad_boxes_fail_with_one_line_naming_the_file(tmp_path, row, message):
    make_box_images(str(tmp_path), 1)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    path = tmp_path / "edited.csv"
    path.write_text("image_path,xmin,ymin,xmax,ymax,label\n" + row + "\n")
    with pytest.raises(DataError) as err:
        read_csv(str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_tiles_cover_the_image_and_keep_boxes_at_least_half_inside():
    wins = windows(100, 60, 40)
    assert all(x1 - x0 == 40 and y1 - y0 == 40 for x0, y0, x1, y1 in wins)  # every tile whole, the last flush
    assert {w[2] for w in wins} >= {100} and {w[3] for w in wins} >= {60}
    item = Labelled("x.png", 100, 60, np.array([[30, 0, 50, 10], [36, 20, 56, 30], [10, 10, 20, 20]], np.float32),
                    ["half-in", "mostly-out", "inside"])
    first = cut(item, (0, 0, 40, 40))
    assert first.labels == ["half-in", "inside"]  # 10 of 20 px inside: kept; 4 of 20: dropped
    np.testing.assert_allclose(first.boxes[0], [30, 0, 40, 10])  # clipped to the tile
    second = cut(item, (40, 0, 80, 40))  # the tile's own pixels: shifted by its origin
    np.testing.assert_allclose(second.boxes, [[0, 0, 10, 10], [0, 20, 16, 30]])
    assert sum(len(t.boxes) for t in tile([item], 200)) == 3  # an image no larger than a tile stays whole
    # tiles given to fit are cut again: the window stays the one in the file, not the tile's own origin
    again = tile([second], 40)
    assert [t.window for t in again] == [(40, 0, 80, 40)] and np.array_equal(again[0].boxes, second.boxes)
    assert [t.window for t in tile([second], 20)][-1] == (60, 20, 80, 40)


def test_validation_holds_out_whole_images_and_never_a_pixel_trained_on():
    from headstart.detection.tile_training import tiles_overlap

    boxes = np.array([[30, 30, 50, 50]], np.float32)
    images = [Labelled(f"{i}.png", 100, 60, boxes, ["square"]) for i in range(10)]
    det = hs.ObjectDetector(tile_size=40, val_fraction=0.2, seed=0)
    train, val = det._split(images)
    assert len({t.path for t in val}) == 2 and not {t.path for t in train} & {t.path for t in val}
    assert len(train) + len(val) == 10 * len(windows(100, 60, 40))  # whole images: every tile of each kept
    # one image alone: its tiles are split, and training keeps none that shares a pixel with a validation tile
    train, val = det._split(images[:1])
    assert val and train and not any(tiles_overlap(t, v) for t in train for v in val)
    assert len(train) + len(val) < len(windows(100, 60, 40))  # an edge tile overlapping a held-out one: dropped


@pytest.mark.parametrize("name", [TINY, "torchvision:resnet18"])
def test_pyramid_taps_the_later_layer_groups_of_registry_backbones(name):
    backbone = hs.create_backbone(name, pretrained=False)
    levels = choose_levels(backbone)
    groups = backbone.group_names()
    assert [s for _, _, s in levels] == [8, 16, 32]
    assert all(g in groups for g, _, _ in levels)
    assert [groups.index(g) for g, _, _ in levels] == sorted(groups.index(g) for g, _, _ in levels)
    model = DetectorModel(backbone, 2, 64, levels)
    maps = model.taps(torch.zeros(1, 3, 64, 64))
    assert [m.shape[1] for m in maps.values()] == [c for _, c, _ in levels]


def test_a_transformer_backbone_is_refused_with_a_reason():
    with pytest.raises(hs.HeadstartError, match="no feature maps at two scales"):
        choose_levels(hs.create_backbone("timm:test_vit", pretrained=False))


def _batches(tmp_path, n=6):
    from headstart.detection.tile_training import TileDataset, collate

    items = read_csv(make_box_images(str(tmp_path), n))
    data = TileDataset(items, ["bar", "square"], flip=False)
    return torch.utils.data.DataLoader(data, batch_size=3, collate_fn=collate)


@pytest.mark.parametrize("strategy, keep_stats, trained, stats_moved", [
    ("features", True, set(), set()), ("finetune", True, {"final"}, set()), ("finetune", False, {"final"}, {"final"})])
def test_strategies_train_only_their_groups_and_frozen_batchnorm_keeps_its_statistics(
        tmp_path, strategy, keep_stats, trained, stats_moved):
    backbone = hs.create_backbone(TINY, pretrained=False)
    model = DetectorModel(backbone, 2, 64, choose_levels(backbone))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stage = get_strategy(strategy, last_n=1).plan(backbone.group_names(), 1, 1e-2, 1)[0]
    loader = _batches(tmp_path)
    run_stage(model, stage, loader, loader, DetectionLoss(), "detection",
              LoopConfig(verbose=False, patience=9, freeze_bn_stats=keep_stats))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("head.") for k in changed)

    def group(key: str) -> str:  # a BatchNorm buffer belongs to the group of its module's weight
        name = key[len("backbone.body."):]
        return backbone._param_group[name if name in backbone._param_group else name.rsplit(".", 1)[0] + ".weight"]

    body = [k for k in changed if k.startswith("backbone.") and "num_batches_tracked" not in k]
    assert {group(k) for k in body if "running_" not in k} == trained
    # frozen BatchNorm stays in eval mode: its statistics move only in trained groups, and only when asked
    assert {group(k) for k in body if "running_" in k} == stats_moved


def test_map_counts_iou_half_at_50_but_not_at_higher_thresholds():
    truth = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), "labels": torch.tensor([0, 1])}]
    exact = [{"boxes": truth[0]["boxes"], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])}]
    assert box_map(exact, truth, ["a", "b"])["map"] == 1.0
    loose = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 46]]), "scores": torch.tensor([0.9, 0.8]),
              "labels": torch.tensor([0, 1])}]  # IoU 400/520 = 0.77 for b
    result = box_map(loose, truth, ["a", "b", "c"])
    assert result["per_class"]["b"]["map_50"] == 1.0 and result["per_class"]["b"]["map"] < 0.7
    assert result["per_class"]["a"]["map"] == 1.0 and result["per_class"]["c"]["map"] is None
    wrong = [{"boxes": truth[0]["boxes"], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 0])}]
    assert box_map(wrong, truth, ["a", "b"])["map_50"] == 0.0


def test_map_agrees_with_torchmetrics_own_summary_below_100_boxes():
    from torchmetrics.detection import MeanAveragePrecision

    g = torch.Generator().manual_seed(0)

    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * 100
        return torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 30], 1)

    truth = [{"boxes": boxes(20), "labels": torch.randint(0, 3, (20,), generator=g)} for _ in range(4)]
    preds = [{"boxes": torch.cat([t["boxes"][:15] + torch.randn(15, 4, generator=g) * 3, boxes(10)]),
              "scores": torch.rand(25, generator=g),
              "labels": torch.cat([t["labels"][:15], torch.randint(0, 3, (10,), generator=g)])} for t in truth]
    reference = MeanAveragePrecision(class_metrics=True)
    reference.update(preds, truth)
    expected = reference.compute()
    ours = box_map(preds, truth, ["a", "b", "c"])
    for key in ("map", "map_50", "map_75"):
        assert ours[key] == pytest.approx(float(expected[key]), abs=1e-4)
    assert [v["map"] for v in ours["per_class"].values()] == pytest.approx(expected["map_per_class"].tolist(),
                                                                            abs=1e-4)


def test_map_ranks_more_than_coco_s_100_detections_on_a_crowded_image():
    xy = torch.arange(150, dtype=torch.float32).reshape(-1, 1) * 20
    truth = [{"boxes": torch.cat([xy, xy, xy + 10, xy + 10], 1), "labels": torch.zeros(150).long()}]
    found = [{**truth[0], "scores": torch.linspace(1, 0.5, 150)}]
    assert box_map(found, truth, ["tree"])["map_50"] == 1.0  # capped at 100, recall (and AP) would stop at 2/3


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    train = make_box_images(str(root / "train"), 24, negatives=2)
    test = make_box_images(str(root / "test"), 8, seed=1)
    det = hs.ObjectDetector(backbone=TINY, pretrained=False, strategy="full", tile_size=64, epochs=6, lr=3e-3,
                            verbose=False, out_dir=str(root / "run")).fit(train)
    return det, root, test


def test_fit_learns_to_find_squares_and_reports_map(fitted):
    det, root, test = fitted
    result = det.evaluate(test)
    assert result["images"] == 8 and set(result["per_class"]) == {"bar", "square"}
    assert result["per_class"]["square"]["map_50"] > 0.5  # measured: 0.0 untrained, 0.94 after these 6 epochs
    assert det.metrics_["validation"]["map_50"] is not None
    with open(root / "run" / "metrics.jsonl") as f:
        assert len([json.loads(line) for line in f]) == len(det.history_) >= 1
    # the report's picture: validation tiles with their true boxes (green) and the detector's (red)
    pixels = np.asarray(Image.open(root / "run" / "report" / "boxes.png").convert("RGB")).reshape(-1, 3)
    assert (pixels == [0, 255, 0]).all(1).any() and (pixels == [255, 0, 0]).all(1).any()


def test_bundle_round_trip_predicts_the_same_boxes(fitted, tmp_path):
    det, root, test = fitted
    loaded = hs.load(str(root / "run" / "model.hs"))
    assert isinstance(loaded, hs.ObjectDetector) and loaded.classes_ == det.classes_
    image = str(root / "test" / "img0.png")
    a, b = det.predict(image)[0], loaded.predict(image)[0]
    assert a["labels"] == b["labels"] and len(a["boxes"]) > 0
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-4)


def test_predict_slides_tiles_over_a_large_image_and_merges_their_boxes(fitted, tmp_path, monkeypatch):
    from headstart.detection import estimator as estimator_module

    det, _, _ = fitted
    Image.new("RGB", (150, 100)).save(tmp_path / "big.png")
    seen = []
    real_windows = estimator_module.windows

    def record(*args):
        seen.extend(real_windows(*args))
        return seen

    def fake_detect(tiles):  # every tile reports the object at (10, 10, 30, 30) of the image, in its own pixels
        assert [tuple(t.shape[-2:]) for t in tiles] == [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in seen]
        return [{"boxes": torch.tensor([[10.0, 10, 30, 30]]) - torch.tensor([w[0], w[1]] * 2),
                 "scores": torch.tensor([0.5 + i / 100]), "labels": torch.tensor([0])} for i, w in enumerate(seen)]

    monkeypatch.setattr(estimator_module, "windows", record)
    monkeypatch.setattr(det, "_detect_pixels", fake_detect)
    found = det.predict(str(tmp_path / "big.png"))[0]
    assert len(seen) > 1 and all(x1 <= 150 and y1 <= 100 for _, _, x1, y1 in seen)
    # every tile reported the same object in image pixels: shifted back, the copies merge into one
    assert found["boxes"] == [[10.0, 10.0, 30.0, 30.0]] and found["labels"] == [det.classes_[0]]


def test_unknown_strategy_is_refused_before_any_work(tmp_path):
    with pytest.raises(hs.HeadstartError, match="does not apply to detection"):
        hs.ObjectDetector(strategy="lora").fit(str(tmp_path / "missing.csv"))


def test_cli_fits_evaluates_and_writes_boxes(tmp_path):
    import csv
    import subprocess
    import sys

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "headstart.cli", *args], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    data = make_box_images(str(tmp_path / "train"), 10, negatives=1)
    out = str(tmp_path / "run")
    run("fit", data, "--task", "detection", "--backbone", TINY, "--scratch", "--tile-size", "64", "--epochs", "1",
        "--strategy", "full", "--out", out, "--quiet")
    metrics = json.loads(run("evaluate", os.path.join(out, "model.hs"), data, "--json"))
    assert {"map_50", "map", "per_class"} <= set(metrics) and metrics["images"] == 11
    run("predict", os.path.join(out, "model.hs"), str(tmp_path / "train"), "--out", str(tmp_path / "boxes.csv"))
    with open(tmp_path / "boxes.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image_path", "xmin", "ymin", "xmax", "ymax", "label", "score"]
    assert {os.path.basename(r["image_path"]) for r in rows} == {f"img{i}.png" for i in range(11)}  # CSV skipped
    boxes = [r for r in rows if r["xmin"]]
    assert boxes and all(0 <= float(r["xmin"]) < float(r["xmax"]) <= 64 for r in boxes)


def test_predict_boxes_writes_jsonl_one_object_per_image(fitted, tmp_path):
    from headstart.api import predict_boxes

    det, root, _ = fitted
    images = [str(root / "test" / f"img{i}.png") for i in range(2)]
    done = predict_boxes(det, images, str(tmp_path / "boxes.jsonl"))
    with open(tmp_path / "boxes.jsonl") as f:
        found = [json.loads(line) for line in f]
    assert [r["path"] for r in found] == images and done == {"images": 2, "boxes": sum(len(r["boxes"]) for r in found)}
    assert found[0]["boxes"] == det.predict(images[0])[0]["boxes"]


def test_fit_refuses_data_without_boxes_and_validation_labels_it_never_saw(tmp_path):
    negatives = make_box_images(str(tmp_path / "neg"), 0, negatives=3)
    with pytest.raises(DataError, match="no boxes to learn from"):
        hs.ObjectDetector(backbone=TINY, pretrained=False, tile_size=64, verbose=False).fit(negatives)
    train = read_csv(make_box_images(str(tmp_path / "train"), 3))
    valid = [Labelled(train[0].path, 64, 64, train[0].boxes, ["tree"] * len(train[0].boxes))]
    with pytest.raises(DataError, match="label 'tree' is not among the training classes"):
        hs.ObjectDetector(backbone=TINY, pretrained=False, tile_size=64, verbose=False).fit(train, valid=valid)
