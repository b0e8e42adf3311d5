import threading

import numpy as np
import pytest

from bmcore.bundle import load_bundle
from bmcore.predictor import Predictor, pick_device
from bmcore.preprocess import decode_image
from tests.conftest import make_bundle


def test_device_choice_falls_back_to_cpu():
    import torch

    if not torch.cuda.is_available():
        assert pick_device().type in ("cpu", "mps")
    assert pick_device("cpu").type == "cpu"


def test_predict_calibrated_topk_and_errors(tiny_bundle, crops):
    p = Predictor(tiny_bundle, threshold=0.0)
    srcs = [crops["BLA"][0], crops["EOS"][1].read_bytes(), decode_image(crops["LYT"][2]), b"garbage"]
    res = p.predict(srcs, names=["a", "b", "c", "d"])
    assert [r.ok for r in res] == [True, True, True, False] and "not a recognised" in res[3].error
    for r in res[:3]:
        assert sum(r.probabilities.values()) == pytest.approx(1, abs=1e-5)
        assert r.top[0][0] == r.code and len(r.top) == 3 and r.top[0][1] >= r.top[1][1]
        assert not r.uncertain and not r.hairy_flag


def test_uncertain_below_threshold_and_temperature(tmp_path, crops):
    hot = Predictor(make_bundle(tmp_path / "t1", ["BLA", "EOS", "LYT"], temperature=1.0), threshold=0.99)
    cold = Predictor(make_bundle(tmp_path / "t5", ["BLA", "EOS", "LYT"], temperature=5.0), threshold=0.99)
    a = hot.predict([crops["BLA"][0]])[0]
    b = cold.predict([crops["BLA"][0]])[0]
    assert a.code == b.code and b.confidence < a.confidence  # same weights (seed), softer probabilities
    assert b.uncertain


def test_hairy_flag_only_with_hac_model(tmp_path, crops):
    p = Predictor(make_bundle(tmp_path / "h", ["HAC", "LYT", "MON"], task="hcl7"), hairy_threshold=0.0)
    assert p.covers_hairy_cells and p.predict([crops["LYT"][0]])[0].hairy_flag


def test_batched_equals_single(tiny_bundle, crops):
    p = Predictor(tiny_bundle)
    files = [f for c in crops.values() for f in c[:2]]
    batched = np.array([list(r.probabilities.values()) for r in p.predict(files)])
    single = np.array([list(p.predict([f])[0].probabilities.values()) for f in files])
    assert np.allclose(batched, single, atol=1e-4)


def test_explain_overlay(tiny_bundle, crop_path):
    p = Predictor(tiny_bundle)
    cam, ov, code = p.explain(crop_path, method="gradcam++")
    s = tiny_bundle.data_config.input_size
    assert cam.shape == (s, s) and ov.shape == (s, s, 3) and ov.dtype == np.uint8 and code in p.classes
    with pytest.raises(ValueError, match="not covered"):
        p.explain(crop_path, "HAC")


def test_shared_predictor_is_thread_safe(tiny_bundle, crops):
    """Eight threads predicting and explaining at once give the single-thread answers."""
    p = Predictor(tiny_bundle)
    files = [f for c in crops.values() for f in c[:3]]
    ref_probs = [r.probabilities for r in p.predict(files)]
    ref_cams = [p.explain(f, "BLA")[0] for f in files[:4]]
    errors, outs = [], {}

    def work(i):
        try:
            outs[i] = ([r.probabilities for r in p.predict(files)], [p.explain(f, "BLA")[0] for f in files[:4]])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not p.model._forward_hooks and not any(m._forward_hooks for m in p.model.modules())
    for probs, cams in outs.values():
        for a, b in zip(probs, ref_probs):
            assert a == pytest.approx(b, abs=1e-5)
        for a, b in zip(cams, ref_cams):
            assert np.allclose(a, b, atol=1e-4)
