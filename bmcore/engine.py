"""The CPU inference engine: a bundle's model exported to ONNX (fp32, and int8) and run by ONNX Runtime.

Torch is for training, Grad-CAM and the export itself (and for the TTA views, made once in ``bmcore.forward``);
prediction on a CPU runs the bundle's ONNX file, which computes
exactly ``split_forward`` (penultimate features for the out-of-distribution gate, then logits) in one graph:

* ``model.onnx``: fp32, exported from the bundle's weights (batch axis dynamic);
* ``model.int8.onnx``: int8, static quantisation (ONNX Runtime's QDQ format, per-channel weights, uint8
  activations) calibrated on crops of the **train** split.

Both are sha256-checked against ``bundle.json["onnx"]`` like the weights, and an ONNX Runtime session is
created once per file per process (``session``): every Predictor and every app session shares it.

Threads: a batch is cut into parts that the cores this process may run on (``inference_threads``;
``BM_INFERENCE_THREADS`` overrides) take side by side, each part in a one-thread session
(``Predictor._predict_parallel``); a few crops run in one session whose intra-op pool has all those cores,
without spin-waiting, so a core that another process holds is given back instead of burnt waiting
(``bench`` measures these with a competing process on one core).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
OPSET = 17
# predictions of the fp32 ONNX model and of torch agree to this (max abs difference of logits), tested
ONNX_FP32_ATOL = 1e-3

_sessions: dict[tuple, object] = {}
_sessions_lock = threading.Lock()


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def inference_threads() -> int:
    """Intra-op threads for a forward pass: ``BM_INFERENCE_THREADS``, else the cores this process may use."""
    env = os.environ.get("BM_INFERENCE_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_blas_limited = False


def one_blas_thread() -> None:
    """NumPy's BLAS runs in one thread in this process from now on (idempotent; the inference path calls it).

    The gate's small matrix products (a chunk's features against 64 directions) were threaded by OpenBLAS, whose
    idle threads spin-wait: beside ONNX Runtime on two cores that cost 25 ms per chunk, a quarter of a 500-cell
    differential (measured 2026-11-27: 3.1 s -> 2.3-2.4 s with one BLAS thread, this 2-core machine). Products this
    small gain nothing from a second thread."""
    global _blas_limited
    if _blas_limited:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    _blas_limited = True


def session(path: str | Path, sha256: str, threads: int | None = None):
    """The process's one ONNX Runtime session for ``path`` (checked against ``sha256`` when first opened)."""
    import onnxruntime as ort

    from .bundle import BundleError, sha256_file

    threads = threads or inference_threads()
    key = (str(Path(path).resolve()), sha256, threads, os.environ.get("BM_INFERENCE_SPIN") == "1")
    with _sessions_lock:
        if key in _sessions:
            return _sessions[key]
        digest = sha256_file(Path(path))
        if digest != sha256:
            raise BundleError(f"{Path(path).parent.name}: {Path(path).name} sha256 {digest[:12]}… does not match "
                              f"bundle.json ({sha256[:12]}…); the file was changed or corrupted")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle pool threads sleep instead of spin-waiting (BM_INFERENCE_SPIN=1 lets them spin; see bench)
        so.add_session_config_entry("session.intra_op.allow_spinning",
                                    "1" if os.environ.get("BM_INFERENCE_SPIN") == "1" else "0")
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        _sessions[key] = s
        return s


def tta_views(x: np.ndarray) -> list[np.ndarray]:
    """The test-time views of ``bmcore.forward.dihedral_views`` (the one definition) as contiguous numpy arrays."""
    import torch

    from .forward import dihedral_views

    return [v.contiguous().numpy() for v in dihedral_views(torch.from_numpy(x))]


class OnnxModel:
    """A bundle's ONNX model at one precision: ``(logits, features)`` of a normalised NCHW float32 batch."""

    def __init__(self, bundle, precision: str = "fp32", threads: int | None = None):
        info = (bundle.meta.get("onnx") or {}).get(precision)
        if not info:
            from .bundle import BundleError

            raise BundleError(f"{bundle.name}: no {precision} ONNX model in this bundle (python -m train.export)")
        self.precision = precision
        self.path = bundle.path / info["file"]
        self.session = session(self.path, info["sha256"], threads)

    def __call__(self, x: np.ndarray, *, tta: bool = False, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        logits, feats = [], []
        for i in range(0, len(x), batch_size):
            xb = np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)
            outs = [self.session.run(None, {"input": v}) for v in (tta_views(xb) if tta else [xb])]
            logits.append(np.mean([o[0] for o in outs], axis=0))
            feats.append(np.mean([o[1] for o in outs], axis=0))
        if not logits:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(logits), np.concatenate(feats)


def export_onnx(bundle, calibration: np.ndarray, calibration_note: str) -> dict:
    """Write the bundle's fp32 and int8 ONNX models and record them (file, sha256, how made) in bundle.json.

    ``calibration``: normalised NCHW float32 crops of the train split, for the int8 activation ranges.
    """
    import tempfile

    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, \
        quantize_static

    from .bundle import sha256_file, update_bundle_meta
    from .forward import split_forward

    class Features(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            feats, logits = split_forward(self.model, x)
            return logits, feats

    model = bundle.build_model().eval()
    fp32 = bundle.path / ONNX_FILES["fp32"]
    torch.onnx.export(Features(model).eval(), (torch.zeros(2, 3, *calibration.shape[-2:]),), str(fp32),
                      input_names=["input"], output_names=["logits", "features"], opset_version=OPSET,
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}, "features": {0: "n"}}, dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calibration[i:i + 16].astype(np.float32)}
                                 for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    int8 = bundle.path / ONNX_FILES["int8"]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    info = {"opset": OPSET, "outputs": ["logits", "features"],
            "fp32": {"file": fp32.name, "sha256": sha256_file(fp32)},
            "int8": {"file": int8.name, "sha256": sha256_file(int8), "format": "QDQ, per-channel int8 weights, "
                     "uint8 activations", "calibration": calibration_note}}
    update_bundle_meta(bundle, onnx=info)
    return info
