"""The bundled default model: present, small, trustworthy, and its stated test metrics reproduce."""

import json

import pytest

from bmcore.bundle import load_bundle
from bmcore.cli import default_bundle
from tests.conftest import DEV_CLASSES, REPO


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(default_bundle())  # verifies the sha256 of the weights


def test_default_bundle_contract(bundle):
    size = sum(f.stat().st_size for f in bundle.path.iterdir())
    assert size < 25 * 1024 * 1024
    m = bundle.meta
    assert bundle.classes == DEV_CLASSES and m["task"] == "bm14"
    assert set(m["classes_missing_from_task"]) == {"EBO", "MMZ", "MYB", "NGB", "PEB", "PLM"}
    assert "test split" in m["metrics"]["split"]
    # ImageNet weights from a pip package, directly or through the bundle it was fine-tuned from (--init-from)
    src = m["training"]["weights_source"]
    assert src.startswith("pip:") or (src.startswith("bundle:") and "itself from pip:" in src), src
    assert "val split" in m["calibration"]["fitted_on"]
    assert m["statement"] == "For research use only. Not for use in diagnostic procedures."
    assert (bundle.path / "eval_test.json").is_file()


def test_stated_test_metrics_reproduce(bundle, dev_root):
    """Re-run the evaluation on the committed test split; it must give the numbers bundle.json states."""
    from train.evaluate import evaluate

    r = evaluate(bundle, dev_root, REPO / "train" / "splits" / "bm-dev_seed42.csv", write=False)
    stated = bundle.meta["metrics"]
    assert r["metrics"]["n"] == 810
    assert r["metrics"]["macro_f1"] == pytest.approx(stated["macro_f1"], abs=0.005)
    assert r["metrics"]["accuracy"] == pytest.approx(stated["accuracy"], abs=0.005)
    assert r["metrics"]["ece"] == pytest.approx(stated["ece"], abs=0.01)
    ev = json.loads((bundle.path / "eval_test.json").read_text())
    assert ev["weights_sha256"] == bundle.sha256
