"""The CPU inference engine: the bundle's ONNX models against torch, their checks, the default setting, start-up."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bmcore.bundle import BundleError, load_bundle, update_bundle_meta
from bmcore.engine import ONNX_FP32_ATOL, export_onnx
from bmcore.predictor import Predictor
from bmcore.cli import default_bundle
from tests.conftest import REPO, make_bundle

DEFAULT_BUNDLE = default_bundle()

# int8 against fp32 on real crops: the same top class for this share of crops at least, and calibrated
# probabilities within this much (measured on the default bundle: see test_int8_close_to_fp32)
INT8_MIN_AGREEMENT = 0.95
INT8_MAX_PROB_DIFF = 0.35


def _real(crops, per_class=4):
    return [p.read_bytes() for c in sorted(crops) for p in crops[c][:per_class]]


def _need_onnx(bundle_path):
    if not load_bundle(bundle_path).meta.get("onnx"):
        pytest.fail(f"{bundle_path.name} has no ONNX models: run python -m train.export")


def test_onnx_fp32_matches_torch_on_real_crops(crops):
    _need_onnx(DEFAULT_BUNDLE)
    srcs = _real(crops)
    torch_p = Predictor(DEFAULT_BUNDLE, engine="torch", precision="fp32", tta=False)
    onnx_p = Predictor(DEFAULT_BUNDLE, engine="onnx", precision="fp32", tta=False)
    x = torch_p.batch(srcs)
    lt, ft = torch_p.outputs(x)
    lo, fo = onnx_p.outputs(x)
    assert np.abs(lt - lo).max() <= ONNX_FP32_ATOL and np.abs(ft - fo).max() <= ONNX_FP32_ATOL * 10
    a, b = torch_p.predict(srcs), onnx_p.predict(srcs)
    assert [r.code for r in a] == [r.code for r in b]
    assert [r.rejected for r in a] == [r.rejected for r in b], "the gate sees the same features"
    # with TTA too: the same four views
    lt4 = Predictor(DEFAULT_BUNDLE, engine="torch", tta=True).logits(x[:8])
    lo4 = Predictor(DEFAULT_BUNDLE, engine="onnx", precision="fp32", tta=True).logits(x[:8])
    assert np.abs(lt4 - lo4).max() <= ONNX_FP32_ATOL


def test_int8_close_to_fp32(crops):
    _need_onnx(DEFAULT_BUNDLE)
    srcs = _real(crops, 6)
    fp32 = Predictor(DEFAULT_BUNDLE, engine="onnx", precision="fp32", tta=False, gate=False).predict(srcs)
    int8 = Predictor(DEFAULT_BUNDLE, engine="onnx", precision="int8", tta=False, gate=False).predict(srcs)
    agree = np.mean([a.code == b.code for a, b in zip(fp32, int8)])
    diff = max(abs(a.probabilities[c] - b.probabilities[c]) for a, b in zip(fp32, int8) for c in a.probabilities)
    assert agree >= INT8_MIN_AGREEMENT and diff <= INT8_MAX_PROB_DIFF, (agree, diff)


def test_default_setting_is_the_bundles_choice_and_its_figures_say_so():
    _need_onnx(DEFAULT_BUNDLE)
    meta = load_bundle(DEFAULT_BUNDLE).meta
    inf = meta["inference"]
    p = Predictor(DEFAULT_BUNDLE)
    assert (p.engine, p.precision, p.tta) == (inf["engine"], inf["precision"], inf["tta"]) and not p.fallback
    chosen = next(r for r in inf["settings"] if (r["engine"], r["precision"], r["tta"]) ==
                  (inf["engine"], inf["precision"], inf["tta"]))
    ref = next(r for r in inf["settings"] if r["engine"] == "torch" and r["tta"] == inf["reference_tta"])
    assert chosen["val_macro_f1"] >= ref["val_macro_f1"] - 0.005, "chosen within tolerance on val"
    faster_ok = [r for r in inf["settings"] if r["val_macro_f1"] >= ref["val_macro_f1"] - 0.005
                 and r["forward_ms_per_cell"] < chosen["forward_ms_per_cell"]]
    rejected = inf.get("rejected_candidate")
    if rejected:  # the val choice failed its test acceptance: the reference's own computation, on ONNX fp32
        assert rejected["test_macro_f1"] < ref["test_macro_f1"] - 0.005
        assert (chosen["precision"], chosen["tta"]) == ("fp32", inf["reference_tta"])
        assert [(r["engine"], r["precision"], r["tta"]) for r in faster_ok] == \
            [(rejected["engine"], rejected["precision"], rejected["tta"])]
    else:
        assert not faster_ok, "the fastest setting within tolerance was chosen"
        assert chosen["test_macro_f1"] >= ref["test_macro_f1"] - 0.005
    # the test figures the app shows are of exactly that setting
    assert meta["metrics"]["setting"] == p.setting
    ev = json.loads((DEFAULT_BUNDLE / "eval_test.json").read_text())
    assert ev["setting"] == p.setting and ev["weights_sha256"] == meta["weights_sha256"]


def test_changed_onnx_file_is_refused_and_missing_onnx_falls_back(tmp_path, crops):
    b = make_bundle(tmp_path / "b", ["BLA", "EOS", "LYT"], size=96).path  # 96 px: pooling ONNX can export
    update_bundle_meta(load_bundle(b), inference={"engine": "onnx", "precision": "int8", "tta": False})
    p = Predictor(b)  # a bundle that asks for ONNX but has no ONNX files still runs, on torch, and says why
    assert (p.engine, p.precision) == ("torch", "fp32") and "no ONNX" in p.fallback
    x = p.batch([crops["BLA"][0].read_bytes()] * 4)
    export_onnx(load_bundle(b), x.numpy(), "4 test crops")
    bundle = load_bundle(b)
    o = Predictor(bundle, engine="onnx", precision="fp32")
    assert np.abs(o.logits(x) - p.logits(x)).max() <= ONNX_FP32_ATOL
    bad = tmp_path / "bad"
    shutil.copytree(b, bad)
    f = bad / bundle.meta["onnx"]["int8"]["file"]
    f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))
    with pytest.raises(BundleError, match="sha256"):
        Predictor(bad, engine="onnx", precision="int8")


def test_app_and_cli_start_without_timm_gradcam_or_sklearn():
    code = ("import sys, bmcore.predictor, bmcore.cli, bmcore.cases, bmcore.explain; "
            "from bmcore.predictor import Predictor; from bmcore.cli import default_bundle as d; DEFAULT_BUNDLE = d(); "
            "p = Predictor(DEFAULT_BUNDLE); p.predict([open(sys.argv[1], 'rb').read()]); "
            "print(sorted(m for m in ('timm', 'pytorch_grad_cam', 'sklearn') if m in sys.modules))")
    crop = next((REPO.parent / "shared" / "data" / "bm-dev").rglob("*.jpg"))
    out = subprocess.run([sys.executable, "-c", code, str(crop)], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", "slow imports left out of the prediction path"


def test_one_decode_per_crop_and_small_jpegs_kept_as_their_thumbnail(crops, tmp_path, monkeypatch):
    """The background job's path: predict (with thumbnails) then the store's rows; each crop is decoded once."""
    import io

    from PIL import Image

    import bmcore.predictor
    import bmcore.preprocess
    from bmcore.cases import cell_inputs
    from bmcore.inputs import from_upload

    jpg = crops["BLA"][0].read_bytes()
    big = io.BytesIO()
    Image.open(io.BytesIO(jpg)).resize((600, 600)).save(big, "PNG")
    items = [it for name, data in [("a.jpg", jpg), ("b.png", big.getvalue()), ("c.jpg", b"not an image")]
             for it in from_upload(name, data)]
    calls = []
    real = bmcore.preprocess.decode_image

    def counting(src, **kw):
        calls.append(1)
        return real(src, **kw)

    monkeypatch.setattr(bmcore.predictor, "decode_image", counting)
    monkeypatch.setattr(bmcore.preprocess, "decode_image", counting)
    p = Predictor(make_bundle(tmp_path / "b", ["BLA", "EOS", "LYT"]))
    rows = cell_inputs(items, p.predict_items(items, thumbnails=True))
    assert len(calls) == 3, "decoded once each (the unreadable one too), never again for the thumbnail"
    assert rows[0].thumbnail == jpg, "a small JPEG crop is its own thumbnail, not re-encoded"
    thumb = Image.open(io.BytesIO(rows[1].thumbnail))
    assert thumb.format == "JPEG" and max(thumb.size) == 256
    assert not rows[2].ok and rows[2].thumbnail is None


def test_cores_side_by_side_give_the_one_session_results_in_order(crops, monkeypatch):
    """The data-parallel path (parts of the crops on each core, one-thread sessions) returns what one session on
    one core returns: the same verdicts in the same order, unreadable files kept in place by name, progress to the end;
    and the gate's matrix products run in one BLAS thread (threaded ones spin-wait against the model's threads)."""
    from threadpoolctl import threadpool_info

    import bmcore.predictor

    _need_onnx(DEFAULT_BUNDLE)
    srcs = _real(crops, 5)
    srcs[7:7] = [b"not an image"]
    srcs[29:29] = [b""]
    names = [f"crop {i}" for i in range(len(srcs))]
    parts = []
    real = bmcore.predictor.Predictor._predict_parallel

    def spy(self, sources, *a):
        parts.append(a[-1])
        return real(self, sources, *a)

    monkeypatch.setattr(bmcore.predictor.Predictor, "_predict_parallel", spy)
    monkeypatch.setenv("BM_INFERENCE_THREADS", "1")
    one = Predictor(DEFAULT_BUNDLE).predict(srcs, names)
    assert not parts, "one core: the one-session path"
    monkeypatch.setenv("BM_INFERENCE_THREADS", "2")
    steps = []
    two = Predictor(DEFAULT_BUNDLE).predict(srcs, names, progress=lambda d, n: steps.append((d, n)))
    assert parts and parts[0] < len(srcs), "two cores: parts side by side"
    assert [r.name for r in two] == names and [r.ok for r in two] == [r.ok for r in one]
    assert not two[7].ok and not two[29].ok and "crop 7" == two[7].name and two[7].error == one[7].error
    assert [r.code for r in two] == [r.code for r in one] and [r.rejected for r in two] == [r.rejected for r in one]
    assert max(abs(a.probabilities[c] - b.probabilities[c]) for a, b in zip(one, two) if a.ok
               for c in a.probabilities) < 1e-5
    assert steps[-1] == (len(srcs), len(srcs)) and [d for d, _ in steps] == sorted(d for d, _ in steps)
    # NumPy's own BLAS (the gate's products); SciPy loads another one later, which the gate does not use
    numpy_blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas" and "numpy" in lib["filepath"]]
    assert numpy_blas and all(lib["num_threads"] == 1 for lib in numpy_blas), numpy_blas


def test_libraries_that_import_scikit_learn_are_imported_one_thread_at_a_time(monkeypatch):
    """The field scorer's unpickling and Grad-CAM's import of pytorch-grad-cam both import scikit-learn; in the app they
    run on different threads (a field upload, the Grad-CAM warm-up), and two threads importing it at once gave one a
    partially initialised module (CI, 2026-11-27). Both hold bmcore.IMPORT_LOCK while they import."""
    import builtins

    import joblib

    import bmcore.fields as fields
    from bmcore import IMPORT_LOCK

    held = []
    real_load, real_import = joblib.load, builtins.__import__

    def load(*a, **kw):
        held.append(("scorer", IMPORT_LOCK._is_owned()))
        return real_load(*a, **kw)

    def imp(name, *a, **kw):
        if name == "pytorch_grad_cam":
            held.append(("gradcam", IMPORT_LOCK._is_owned()))
        return real_import(name, *a, **kw)

    monkeypatch.setattr(joblib, "load", load)
    monkeypatch.setattr(fields, "_SCORER", None)
    fields.field_scorer()
    monkeypatch.setattr(builtins, "__import__", imp)
    Predictor(DEFAULT_BUNDLE).warm_explanations()
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert ("scorer", True) in held and ("gradcam", True) in held and all(ok for _, ok in held), held
