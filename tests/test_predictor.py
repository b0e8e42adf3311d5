import dataclasses
import threading

import numpy as np
import pytest

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
    assert cam.shape == (s, s) and ov.shape[0] == s and ov.shape[1] > s and ov.dtype == np.uint8 and code in p.classes
    # the colour scale at the right: the JET map, red (1, raised the class most) at the top, blue (0) at the bottom
    bar = ov[:, s:]
    col = bar[:, 4].astype(int)
    drawn = [r for r in col if not (r == 255).all()]
    assert len(drawn) > s // 2
    top, bottom = drawn[0], drawn[-1]
    assert top[0] > top[2] + 60 and bottom[2] > bottom[0] + 60, (top, bottom)
    with pytest.raises(ValueError, match="not covered"):
        p.explain(crop_path, "HAC")


def test_heatmap_captions_say_which_class_or_none():
    from bmcore.explain import cam_caption, cam_sentence

    assert cam_caption("gradcam", "PMO", "Promyelocyte", "m") == "Grad-CAM for PMO (Promyelocyte) by m"
    eig = cam_caption("eigencam", "PMO", "Promyelocyte", "m")
    assert "PMO" not in eig and "class-agnostic" in eig
    assert "explained class" not in cam_sentence("eigencam") and "explained class" in cam_sentence("gradcam")


def _assert_same_prediction(a, b, tol: float = 1e-6) -> None:
    """Every field of two ``CellPrediction``s equal; numbers (alone, in dicts, in top-k pairs) to ``tol``."""
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, float):
            assert x == pytest.approx(y, abs=tol, nan_ok=True), f.name
        elif isinstance(x, dict):
            assert x.keys() == y.keys() and x == pytest.approx(y, abs=tol), f.name
        elif f.name == "top":
            assert [c for c, _ in x] == [c for c, _ in y], f.name
            assert [v for _, v in x] == pytest.approx([v for _, v in y], abs=tol), f.name
        else:
            assert x == y, f.name


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_shared_predictor_is_thread_safe(crops, engine):
    """The app's shared predictor (the default bundle: TTA, channels-last, BatchNorm, its gate if it has one) used
    by eight threads at once, each predicting real crops and explaining some of them, gives exactly the
    single-thread answers: every field of every cell prediction (class, calibrated probabilities to 1e-6, top-3,
    flags) and every Grad-CAM map (to 1e-6) with the class it explains. Half the threads explain first, so
    Grad-CAM's hooks and gradients run while other threads predict."""
    from bmcore.cli import default_bundle

    p = Predictor(default_bundle(), engine=engine)
    assert p.engine == engine
    files = [c[0] for c in crops.values()]  # 8 real crops, one per class
    cam_files = files[1::4]  # 2 Grad-CAMs per thread, for the predicted class
    ref = p.predict(files)
    ref_cams = [p.explain(f) for f in cam_files]
    n_threads = 8
    start = threading.Barrier(n_threads)
    errors, outs = [], {}

    def work(i):
        try:
            start.wait(60)
            if i % 2:
                cams = [p.explain(f) for f in cam_files]
                preds = p.predict(files)
            else:
                preds = p.predict(files)
                cams = [p.explain(f) for f in cam_files]
            outs[i] = (preds, cams)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(outs) == n_threads
    for m in list(p.model.modules()) + list(p._cam_model.modules()):
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
    if engine == "torch":  # the model that predicts never carries Grad-CAM's gradients (ONNX: it does not predict)
        assert p._cam_model is not p.model
        assert not any(q.requires_grad and q.grad is not None for q in p.model.parameters())
    for preds, cams in outs.values():
        assert [r.name for r in preds] == [r.name for r in ref]
        for a, b in zip(preds, ref):
            _assert_same_prediction(a, b)
        for (cam, ov, code), (rcam, rov, rcode) in zip(cams, ref_cams):
            assert code == rcode and cam.shape == rcam.shape
            assert np.allclose(cam, rcam, atol=1e-6, rtol=0)
            assert np.abs(ov.astype(int) - rov.astype(int)).max() <= 1


def test_selective_tta_takes_all_views_only_for_the_unsure_cells(crops):
    """Selective TTA (a measured candidate, bench/selective_tta.py): a cell under the confidence cut gets exactly the
    4-view mean, every other cell exactly its single view; it says so in its setting."""
    from bmcore.cli import default_bundle
    from bmcore.metrics import softmax
    from bmcore.preprocess import normalize, stack_crops

    files = [f for c in crops.values() for f in c[:3]]
    one = Predictor(default_bundle(), tta=False, gate=False)
    full = Predictor(default_bundle(), tta=True, gate=False)
    xs, errors, _ = one.load_many(files)
    assert not any(errors)
    x = normalize(stack_crops(xs), one.cfg)  # numpy, as the predictor's own path
    lg1, lg4 = one.logits(x), full.logits(x)
    conf = softmax(lg1, one.temperature).max(1)
    tau = float(np.median(conf))
    sel = Predictor(default_bundle(), tta=False, gate=False, tta_below=tau)
    lg = sel.logits(x)
    unsure = conf < tau
    assert 0 < unsure.sum() < len(files)
    assert np.allclose(lg[unsure], lg4[unsure], atol=1e-4) and np.allclose(lg[~unsure], lg1[~unsure], atol=1e-5)
    assert not np.allclose(lg4[unsure], lg1[unsure], atol=1e-3)  # the views do change those cells
    assert "TTA below" in sel.setting and sel.inference_record()["tta_below"] == tau
    assert Predictor(default_bundle(), tta=True, tta_below=tau).tta_below is None  # full TTA wins
