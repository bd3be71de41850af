"""The run report: every section from real runs, the same numbers as metrics.jsonl, and a real headless browser
that loads the page offline, renders every image and logs no console error."""

import json
import os
import re
import shutil

import pytest
from conftest import TINY, TINY_SIZE
from test_text import NEGATIVE, POSITIVE, _write_csv

import headstart as hs


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from conftest import COLOURS, make_class_images

    root = tmp_path_factory.mktemp("report")
    data = make_class_images(str(root / "train"), COLOURS, per_class=12)
    shutil.copy(os.path.join(data, "red", "red_0.png"), os.path.join(data, "red", "copy_of_red_0.png"))
    with open(os.path.join(data, "blue", "notes.png"), "w") as f:
        f.write("not an image")
    out = str(root / "run")
    clf = hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, strategy="two-stage", epochs=1,
                             head_epochs=10, batch_size=8, verbose=False, out_dir=out).fit(data)
    return clf, out


def _page(out: str) -> str:
    with open(os.path.join(out, "report", "index.html"), encoding="utf-8") as f:
        return f.read()


def test_image_report_holds_every_section(image_run):
    clf, out = image_run
    page = _page(out)
    for section in ("<h2>data</h2>", "<h2>validation metrics</h2>", "<h2>learning curves</h2>",
                    "<h2>confusion matrix</h2>", "<h2>calibration</h2>", "worst-classified validation examples"):
        assert section in page, section
    for png in ("learning_curves.png", "confusion_matrix.png", "calibration.png"):
        with open(os.path.join(out, "report", png), "rb") as f:
            assert f.read(4) == b"\x89PNG"
    data = clf.data_summary_
    assert data["duplicates"]["groups"] == 1 and data["duplicates"]["extra_copies"] == 1
    assert "red_0.png" in page and "1 groups of identical inputs" in page
    assert [s["path"].endswith("notes.png") for s in data["skipped"]] == [True] and "notes.png" in page
    assert data["imbalance"] == pytest.approx(13 / 12, abs=0.01)
    thumbnails = re.findall(r'<div class=\'card\'><img alt="[^"]*" src="data:image/png;base64,', page)
    assert len(thumbnails) == min(12, clf.data_summary_["validation"])
    assert "http://" not in page and "https://" not in page and "<script" not in page, "must open offline"


def test_metrics_jsonl_ends_with_the_reports_numbers(image_run):
    clf, out = image_run
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert all("epoch" in r for r in lines[:-1]) and len(lines) - 1 == len(clf.history_)
    final = lines[-1]
    assert final["event"] == "final" and final["validation"] == json.loads(json.dumps(clf.metrics_["validation"]))
    assert f"{final['validation']['accuracy']:.4f}" in _page(out)
    assert f"{final['validation']['ece']:.4f}" in _page(out)


def test_text_report_shows_snippets_of_the_worst_examples(tmp_path):
    rows = [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE] + [(POSITIVE[0], "neg")]
    data = _write_csv(tmp_path / "train.csv", rows)
    out = str(tmp_path / "run")
    hs.TextClassifier(strategy="features", head_epochs=30, val_fraction=0.3, verbose=False, out_dir=out).fit(data)
    page = _page(out)
    assert "worst-classified validation examples" in page and "<img alt=\"\" src=\"data:" not in page
    assert any(t[:40] in page for t in POSITIVE + NEGATIVE), "text snippets must be shown"
    assert "1 carry conflicting labels" in page, "the same text labelled pos and neg must be flagged"


def test_compare_writes_a_report_with_its_table(colour_folder, tmp_path):
    out = str(tmp_path / "cmp")
    hs.compare(colour_folder, strategies=["features"], sizes=[4], backbone=TINY, image_size=TINY_SIZE, epochs=1,
               scratch_epochs=1, out_dir=out, verbose=False, pretrained=False)
    page = _page(out)
    assert "<h2>transfer vs from scratch</h2>" in page and page.count("<tr>") >= 3
    assert "comparison.png" in page and "overfitting.png" in page


def test_report_renders_in_headless_chromium(image_run):
    """Debian's chromium + chromedriver (`make test` installs them): the page loads from file://, every image
    decodes, and the browser logs no error."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver_path):
        pytest.fail("chromium missing: run `make browser` (apt-get install chromium chromium-driver)")
    _, out = image_run
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get("file://" + os.path.abspath(os.path.join(out, "report", "index.html")))
        assert driver.title.startswith("headstart report")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        assert len(images) >= 3 + 1, images  # three plots and at least one thumbnail
        assert all(ok for _, ok in images), [alt for alt, ok in images if not ok]
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
    finally:
        driver.quit()
