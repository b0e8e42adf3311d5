import numpy as np
import pytest

from bmcore.metrics import classification_metrics, expected_calibration_error, fit_temperature, softmax


def test_temperature_recovered_on_synthetic_logits():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(4000, 5))
    true_t = 2.5
    p = softmax(z, true_t)
    y = np.array([rng.choice(5, p=row) for row in p])
    assert fit_temperature(z, y) == pytest.approx(true_t, rel=0.1)
    assert expected_calibration_error(softmax(z, true_t), y) < expected_calibration_error(softmax(z, 1.0), y)


def test_ece_zero_for_perfect_confident_and_half_for_coin():
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(np.eye(2)[y], y) == pytest.approx(0.0)
    wrong = np.eye(2)[1 - y]
    assert expected_calibration_error(wrong, y) == pytest.approx(1.0)


def test_classification_metrics_fields():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.9 + 0.1 / 3
    m = classification_metrics(y, probs, ["A", "B", "C"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["B"]["precision"] == pytest.approx(2 / 3)
    assert set(m["roc"]) == {"A", "B", "C"} and 0 <= m["macro_auc_ovr"] <= 1
