import numpy as np
import pytest

from headstart.metrics import classification_metrics, expected_calibration_error, top_k_accuracy


def test_perfectly_calibrated_confident_predictions_have_zero_ece():
    y = np.array([0, 1, 2, 0])
    proba = np.eye(3)[y]
    assert expected_calibration_error(y, proba) == 0.0


def test_overconfident_wrong_predictions_have_high_ece():
    y = np.array([0, 0, 0, 0])
    proba = np.tile([0.05, 0.95, 0.0], (4, 1))  # always 95% sure of the wrong class
    assert expected_calibration_error(y, proba) == pytest.approx(0.95)


def test_top_k_and_the_full_report():
    y = np.array([0, 1, 2, 3])
    proba = np.array([[0.5, 0.3, 0.1, 0.1], [0.6, 0.3, 0.05, 0.05], [0.1, 0.2, 0.3, 0.4], [0.1, 0.1, 0.1, 0.7]])
    assert top_k_accuracy(y, proba, 1) == 0.5 and top_k_accuracy(y, proba, 2) == 1.0
    m = classification_metrics(y, proba, ["a", "b", "c", "d"])
    assert m["accuracy"] == 0.5 and m["top3_accuracy"] == 1.0 and m["n"] == 4
    assert m["per_class"]["b"]["recall"] == 0.0 and np.array(m["confusion_matrix"]).sum() == 4
    assert 0 <= m["ece"] <= 1
