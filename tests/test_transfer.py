"""Transfer on real data with the real packaged weights: it must beat chance and training from scratch."""

import os

import headstart as hs

SIZE = 96  # Fashion-MNIST photos are 28 px; 96 px keeps these tests to seconds


def test_transfer_beats_chance_and_scratch(fashion):
    train, test = fashion
    transfer = hs.ImageClassifier(strategy="features", image_size=SIZE, verbose=False).fit(train)
    scratch = hs.ImageClassifier(strategy="full", pretrained=False, image_size=SIZE, epochs=3, lr=3e-3,
                                 verbose=False).fit(train)
    t, s = transfer.evaluate(test)["accuracy"], scratch.evaluate(test)["accuracy"]
    assert t > 0.55, f"transfer accuracy {t:.3f} on 10 classes"
    assert t > s + 0.15, f"transfer {t:.3f} vs scratch {s:.3f}"


def test_two_stage_fine_tunes_from_the_probe(fashion, tmp_path):
    train, test = fashion
    clf = hs.ImageClassifier(strategy="two-stage", image_size=SIZE, epochs=1, verbose=False).fit(train)
    stages = [r["stage"] for r in clf.history_]
    assert stages[0] == "head" and stages[-1] == "finetune"
    # a fine-tune that did not beat the probe leaves the pretrained backbone, and the probe refitted on every row
    kept = bool(clf.history_[-1].get("kept_start"))
    assert clf.backbone_trained_ != kept and ("refit" in clf.metrics_) == kept
    acc = clf.evaluate(test)["accuracy"]
    assert acc > 0.55
    reloaded = hs.load(clf.save(str(tmp_path / "fm.hs")))
    assert reloaded.predict(os.path.join(test, "bag")) == clf.predict(os.path.join(test, "bag"))


def test_demo_runs_end_to_end(tmp_path):
    from headstart.demo import run_demo

    results = run_demo(str(tmp_path / "demo"), per_class=6, test_per_class=4, verbose=False,
                       finetune_epochs=1, scratch_epochs=1)
    assert set(results) == {"transfer (two-stage)", "transfer (linear probe only)", "from scratch (same arch)"}
    assert all(m["n"] == 40 for m in results.values())
    assert os.path.isfile(tmp_path / "demo" / "transfer" / "model.hs")
    assert os.path.isfile(tmp_path / "demo" / "transfer" / "report" / "confusion_matrix.png")
