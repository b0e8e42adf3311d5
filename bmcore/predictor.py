"""``Predictor``: calibrated, batched predictions and Grad-CAM for one bundle.

One instance is shared by every session of the app, so it is thread-safe: prediction runs on the bundle's chosen
engine (an ONNX Runtime session, or torch under ``torch.inference_mode``) and never mutates the model; Grad-CAM
attaches hooks to a torch copy, so explanations are serialised with a lock.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import IMPORT_LOCK
from .bundle import Bundle, load_bundle
from .engine import OnnxModel, inference_threads, one_blas_thread, onnxruntime_available
from .metrics import softmax
from .ood import quality_stats, size_refusal
from .preprocess import (ImageDecodeError, decode_image, normalize, resize_rgb, stack_crops, thumbnail_of,
                         to_uint8_array, to_uint8_tensor)
from .tasks import HAIRY_CELL_CODE, cell_name
from .triage import ReviewRules, judge, rules_for_model

if TYPE_CHECKING:  # a predictor of the ONNX engine on a CPU (device "cpu") never imports torch
    import torch


@dataclass(frozen=True)
class CpuDevice:
    """A CPU, as a predictor asked for ``device="cpu"`` holds it: what ``torch.device("cpu")`` says of itself
    (``type``, ``str``) without importing torch, which the ONNX engine never needs (``python -m bmcore archive``'s
    workers start seconds sooner). ``Predictor.torch_device`` is the torch one, where the torch model runs."""
    type: str = "cpu"

    def __str__(self) -> str:
        return "cpu"


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU (or exactly ``prefer`` when given)."""
    import torch

    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class CellPrediction:
    name: str
    ok: bool
    error: str = ""
    code: str = ""
    confidence: float = float("nan")
    probabilities: dict[str, float] = field(default_factory=dict)
    top: list[tuple[str, float]] = field(default_factory=list)
    uncertain: bool = False
    hairy_flag: bool = False
    critical: list[str] = field(default_factory=list)  # critical classes whose review threshold was reached
    rejected: bool = False     # refused by the bundle's quality / out-of-distribution gate
    reject_reason: str = ""
    ood_score: float = float("nan")
    thumbnail: bytes | None = None  # with predict(thumbnails=True): made from the same decode as the prediction

    @property
    def label(self) -> str:
        return cell_name(self.code) if self.code else ""

    @property
    def needs_review(self) -> bool:
        return self.ok and not self.rejected and (self.uncertain or self.hairy_flag or bool(self.critical))


class Predictor:
    DECODE_CHUNK = 64  # crops decoded at a time (bounded memory): the next chunk while the model runs on this one
    # the data-parallel path (ONNX on a CPU, ``_predict_parallel``): crops per part, the fewest worth a part of their
    # own, and the forward micro-batch of a one-thread session (2-4 measured fastest, 16 ~5 % slower)
    PARALLEL_CHUNK, PARALLEL_MIN_PART, PARALLEL_BATCH = 32, 4, 4

    def __init__(self, bundle: Bundle | str | Path, *, device: str | None = None, threshold: float | None = None,
                 hairy_threshold: float | None = None, precision: str = "auto", batch_size: int | None = None,
                 tta: bool | None = None, decode_workers: int = 2, gate: bool = True, engine: str | None = None,
                 tta_below: float | None = None, parallel: bool = True):
        """``engine``: "onnx" (ONNX Runtime on a CPU, precision "fp32" or "int8") or "torch" (precision "fp32",
        "fp16", "bf16"); None and precision "auto" take what the bundle chose on validation
        (``bundle.json["inference"]``), falling back to torch fp32 where ONNX cannot run (a GPU, no onnxruntime, a
        bundle without ONNX files); ``fallback`` then says why.

        ``tta_below`` (with TTA off): selective TTA, a candidate setting measured by ``bench/selective_tta.py`` and
        not yet chosen by any bundle: a cell whose calibrated single-view confidence is under it gets the mean of the
        4 dihedral views, the others keep the single view.

        ``parallel`` (ONNX on a CPU): the cores take parts of a batch side by side, each with a one-thread session
        (``_predict_parallel``); False runs one session on all cores instead (``bmcore bench`` compares the two)."""
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.device = CpuDevice() if device == "cpu" else pick_device(device)
        self.cfg = self.bundle.data_config
        self.classes = self.bundle.classes
        self.temperature = self.bundle.temperature
        # review rules of new classifications: the bundle's validated triage, with the thresholds given overriding
        self.rules = self.review_rules(threshold, hairy_threshold)
        self.tta = self.bundle.tta if tta is None else tta
        self.tta_below = None if self.tta else tta_below
        chosen = self.bundle.meta.get("inference", {})
        self.fallback = ""
        if engine is None:
            engine = chosen.get("engine", "torch")
            if precision == "auto" and engine == "onnx":
                precision = chosen.get("precision", "fp32")
            if engine == "onnx":
                self.fallback = ("a GPU runs the torch model" if self.device.type != "cpu" else
                                 "onnxruntime is not installed" if not onnxruntime_available() else
                                 "the bundle has no ONNX model" if not self.bundle.meta.get("onnx") else "")
                if self.fallback:
                    engine, precision = "torch", "auto"
        self.engine = engine
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        self.precision = precision
        # micro-batch of the forward pass: on a CPU small batches stay in cache (measured: MobileNetV2 at 224 px,
        # 8 ms/cell at 8 vs 13-16 at 32-64, bench/results), on a GPU large ones fill the device
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 16 if engine == "onnx" else 8)
        self._model = None  # the torch model, built when first needed (torch engine, Grad-CAM)
        self._model_lock = threading.Lock()
        self.onnx = OnnxModel(self.bundle, precision) if engine == "onnx" else None
        self.parallel = parallel
        self._onnx_one = None  # the one-thread session of the data-parallel path, opened when first needed
        if self.device.type == "cpu":
            one_blas_thread()
        if engine == "torch":
            _ = self.model
        self._cam_lock = threading.Lock()
        self._cam_model = None  # Grad-CAM's own copy: its hooks must never see a concurrent predict()
        self._decode_workers = decode_workers
        # the bundle's quality + out-of-distribution gate (None: the bundle has none, or it was switched off)
        self.gate = self.bundle.gate() if gate else None

    @property
    def torch_device(self) -> torch.device:
        """This predictor's device as torch's (imports torch: for the torch model and Grad-CAM)."""
        import torch

        return torch.device(str(self.device))

    @property
    def model(self) -> torch.nn.Module:
        """The bundle's torch model on this predictor's device (built on first use)."""
        import torch

        with self._model_lock:
            if self._model is None:
                m = self.bundle.build_model().to(self.torch_device)
                if self.device.type in ("cuda", "cpu"):
                    m = m.to(memory_format=torch.channels_last)
                self._model = m
        return self._model

    # -- description -------------------------------------------------------------------------------
    @property
    def covers_hairy_cells(self) -> bool:
        return HAIRY_CELL_CODE in self.classes

    def review_rules(self, threshold: float | None = None, hairy_threshold: float | None = None) -> ReviewRules:
        """The bundle's review rules (``bundle.json["triage"]``), with a confidence / hairy-cell threshold overridden."""
        return rules_for_model(self.bundle.meta, self.classes, uncertain_below=threshold, hairy_flag_at=hairy_threshold)

    def describe(self) -> dict:
        return {"bundle": self.bundle.name, "device": str(self.device), "engine": self.engine,
                "precision": self.precision, "tta": self.tta, "temperature": self.temperature, "classes": self.classes,
                "gate": self.gate is not None, "fallback": self.fallback}

    def inference_record(self) -> dict:
        """What a case stores of how its cells were computed, so it is resumed and re-read the same way."""
        onnx = (self.bundle.meta.get("onnx") or {}).get(self.precision, {}) if self.engine == "onnx" else {}
        return {"engine": self.engine, "precision": self.precision, "tta": self.tta, "setting": self.setting,
                "onnx_sha256": onnx.get("sha256"), **({"tta_below": self.tta_below} if self.tta_below else {})}

    @property
    def setting(self) -> str:
        """The inference setting in words, e.g. "ONNX int8, no TTA"."""
        tta = ("4-view TTA" if self.tta else f"4-view TTA below {self.tta_below:.2f} confidence" if self.tta_below
               else "no TTA")
        return f"{'ONNX' if self.engine == 'onnx' else 'torch'} {self.precision}, {tta}"

    # -- tensors -----------------------------------------------------------------------------------
    @property
    def _dtype(self) -> torch.dtype | None:
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)

    def logits(self, x: torch.Tensor) -> np.ndarray:
        """Raw (uncalibrated) logits for a normalised NCHW batch, TTA-averaged if the bundle asks for it."""
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return self._forward(x, features=False)

    def outputs(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(raw logits, penultimate features) of a normalised NCHW batch, TTA-averaged like ``logits``."""
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, 0), np.float32)
        return self._forward(x, features=True)

    def _forward(self, x: torch.Tensor, features: bool, onnx=None):
        if not self.tta_below:
            return self._run(x, features, self.tta, onnx)
        out = self._run(x, features, False, onnx)
        logits = out[0] if features else out
        unsure = np.nonzero(softmax(logits, self.temperature).max(1) < self.tta_below)[0]
        if len(unsure):  # the unsure cells again, with all 4 views (the identity view is recomputed: simpler)
            more = self._run(x[unsure] if isinstance(x, np.ndarray) else x[list(unsure)], features, True, onnx)
            if features:
                out[0][unsure], out[1][unsure] = more
            else:
                out[unsure] = more
        return out

    def _run(self, x, features: bool, tta: bool, onnx=None):
        """``x``: a normalised NCHW batch, a numpy array (``_judge``) or a tensor (``logits`` / ``outputs``)."""
        if self.onnx is not None:
            one = onnx is not None and onnx is not self.onnx
            logits, feats = (onnx or self.onnx)(x if isinstance(x, np.ndarray) else x.numpy(), tta=tta,
                                                batch_size=self.PARALLEL_BATCH if one else self.batch_size)
            return (logits, feats) if features else logits
        import torch

        from .forward import forward_logits

        return forward_logits(self.model, torch.from_numpy(x) if isinstance(x, np.ndarray) else x, self.torch_device,
                              dtype=self._dtype, tta=tta, batch_size=self.batch_size,
                              channels_last=self.device.type in ("cuda", "cpu"), features=features)

    # -- images ------------------------------------------------------------------------------------
    def _load_one(self, src, thumbnail: bool = False) -> tuple[np.ndarray, bytes | None]:
        img = src if hasattr(src, "size") and hasattr(src, "mode") else decode_image(src)
        # a camera field or a mosaic of cells is refused by its size before the model sees it (bmcore.ood)
        if why := size_refusal(img.size, self.bundle.crop_side):
            raise ImageDecodeError(why)
        return to_uint8_array(resize_rgb(img, self.cfg)), (thumbnail_of(img, src) if thumbnail else None)

    def load_many(self, sources: list, thumbnails: bool = False, workers: int | None = None):
        """Decode + resize in a small thread pool (PIL releases the GIL); errors (unreadable files, and images too
        large to be a single-cell crop: ``bmcore.ood.size_refusal``) become messages.

        Returns (CHW uint8 arrays or None, error messages, stored thumbnails: with ``thumbnails``, else Nones)."""

        def one(src):
            try:
                x, thumb = self._load_one(src, thumbnails)
                return x, "", thumb
            except ImageDecodeError as exc:
                return None, str(exc), None

        workers = self._decode_workers if workers is None else workers
        if workers > 1 and len(sources) > 4:
            with ThreadPoolExecutor(workers) as ex:
                res = list(ex.map(one, sources))
        else:
            res = [one(s) for s in sources]
        return [r[0] for r in res], [r[1] for r in res], [r[2] for r in res]

    def batch(self, sources: list) -> torch.Tensor:
        """Normalised NCHW batch (a tensor) of readable ``sources`` (bytes, paths, PIL images), as the model sees
        them."""
        import torch

        arrays, _, _ = self.load_many(sources)
        return torch.from_numpy(normalize(stack_crops([t for t in arrays if t is not None]), self.cfg))

    def predict(self, sources: list, names: list[str] | None = None, progress=None, *,
                threshold: float | None = None, hairy_threshold: float | None = None,
                rules: ReviewRules | None = None, thumbnails: bool = False) -> list[CellPrediction]:
        """Predict a batch of images (bytes, paths or PIL images); unreadable ones come back with ``ok=False``.

        ``progress``: optional callable ``(done, total)`` for a progress bar. ``rules`` (or ``threshold`` and
        ``hairy_threshold`` over the bundle's rules) replace the instance's review rules for this call only
        (the app shares one Predictor between sessions, each case with its own rules). ``thumbnails``: each
        readable crop's stored thumbnail comes with its prediction, from the same decode.

        With ONNX on a CPU of several cores the crops are cut into parts (up to 32 crops) that the cores take from
        bytes to verdicts side by side, each with a one-thread session (``_predict_parallel``); otherwise (torch, one
        core, a handful of crops) decoding overlaps inference: the next chunk is decoded (one thread) while the model
        runs on this one, on all cores.
        """
        if rules is None:
            rules = self.rules if threshold is None and hairy_threshold is None else \
                self.review_rules(threshold, hairy_threshold)
        names = names or [Path(s).name if isinstance(s, (str, Path)) else f"image {i + 1}" for i, s in
                          enumerate(sources)]
        n, workers = len(sources), self._parallel_workers()
        part = max(self.PARALLEL_MIN_PART, min(self.PARALLEL_CHUNK, -(-n // workers))) if workers > 1 else n
        if workers > 1 and n > part:
            return self._predict_parallel(sources, names, rules, thumbnails, progress, workers, part)
        results: list[CellPrediction] = []
        chunk = self.DECODE_CHUNK
        starts = list(range(0, n, chunk))
        with ThreadPoolExecutor(1) as prefetch:
            nxt = prefetch.submit(self.load_many, sources[:chunk], thumbnails, 1) if starts else None
            for start in starts:
                loaded = nxt.result()  # decoded on the prefetch thread
                if start + chunk < n:
                    nxt = prefetch.submit(self.load_many, sources[start + chunk:start + 2 * chunk], thumbnails, 1)
                results += self._chunk_predictions(loaded, names[start:start + chunk], rules)
                if progress:
                    progress(min(start + chunk, n), n)
        return results

    def _parallel_workers(self) -> int:
        """Workers of the data-parallel path (``_predict_parallel``): the inference threads on a CPU with ONNX, else 1."""
        return inference_threads() if self.onnx is not None and self.parallel else 1

    def _predict_parallel(self, sources, names, rules, thumbnails, progress, workers: int, part: int):
        """``predict`` on ``workers`` threads, each taking a part of the crops from its bytes to its verdicts with a
        one-thread ONNX Runtime session: no thread ever waits for another inside a layer, so a core that another
        process holds slows only the part on it (``bmcore bench`` compares this with one session on all cores)."""
        one = self._onnx_single()

        def run(start: int):
            loaded = self.load_many(sources[start:start + part], thumbnails, 1)
            return self._chunk_predictions(loaded, names[start:start + part], rules, one)

        results: list[CellPrediction] = []
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(run, start) for start in range(0, len(sources), part)]
            for f in futures:
                results += f.result()
                if progress:
                    progress(len(results), len(sources))
        return results

    def _onnx_single(self) -> OnnxModel:
        """The bundle's ONNX model in a one-thread session (created once per process, like every session)."""
        if self._onnx_one is None:
            self._onnx_one = OnnxModel(self.bundle, self.precision, threads=1)
        return self._onnx_one

    def _chunk_predictions(self, loaded, names: list[str], rules: ReviewRules, onnx=None) -> list[CellPrediction]:
        """Predictions of one decoded chunk (``load_many``'s result), in order; unreadable crops keep their error."""
        tensors, errors, thumbs = loaded
        good = [i for i, t in enumerate(tensors) if t is not None]
        probs, reasons, scores = self._judge([tensors[i] for i in good], onnx)
        row = {i: (p, r, sc) for i, p, r, sc in zip(good, probs, reasons, scores)}
        out = []
        for i, err in enumerate(errors):
            if i not in row:
                out.append(CellPrediction(name=names[i], ok=False, error=err))
                continue
            p, reason, score = row[i]
            verdict = self._verdict(names[i], p, rules)
            verdict.rejected, verdict.reject_reason, verdict.ood_score = bool(reason), reason, float(score)
            verdict.thumbnail = thumbs[i]
            out.append(verdict)
        return out

    def _judge(self, tensors: list, onnx=None) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Calibrated probabilities, gate reasons ("" = accepted) and gate scores for resized uint8 CHW crops (arrays,
        or tensors)
        (``onnx``: the ONNX model to run instead of the predictor's own, e.g. its one-thread session)."""
        n = len(tensors)
        if n == 0:
            return np.zeros((0, len(self.classes))), [], np.zeros(0)
        tensors = [t if isinstance(t, np.ndarray) else t.numpy() for t in tensors]  # train.triage passes tensors
        x = normalize(stack_crops(tensors), self.cfg)
        if self.gate is None:
            return softmax(self._forward(x, False, onnx), self.temperature), [""] * n, np.full(n, np.nan)
        logits, feats = self._forward(x, True, onnx)
        quality = np.array([quality_stats(t.transpose(1, 2, 0)) for t in tensors])
        reasons, scores = self.gate.reasons(feats, logits, quality)
        return softmax(logits, self.temperature), reasons, scores

    def predict_items(self, items, progress=None, **thresholds) -> list[CellPrediction]:
        """Predict ``bmcore.inputs.InputItem``s in order; items refused at collection keep their error."""
        ok = [it for it in items if it.ok]
        preds = iter(self.predict([it.source for it in ok], [it.name for it in ok], progress, **thresholds))
        return [next(preds) if it.ok else CellPrediction(name=it.name, ok=False, error=it.error) for it in items]

    def _verdict(self, name: str, p: np.ndarray, rules: ReviewRules) -> CellPrediction:
        order = np.argsort(-p)
        probs = {c: float(v) for c, v in zip(self.classes, p)}
        uncertain, critical, hairy = judge(probs, rules)
        return CellPrediction(
            name=name, ok=True, code=self.classes[order[0]], confidence=float(p[order[0]]), probabilities=probs,
            top=[(self.classes[j], float(p[j])) for j in order[:3]],
            uncertain=uncertain, hairy_flag=hairy, critical=critical)

    # -- explanations ------------------------------------------------------------------------------
    def explain(self, image, class_code: str | None = None, method: str = "gradcam",
                opacity: float = 0.5) -> tuple[np.ndarray, np.ndarray, str]:
        """Grad-CAM map (input size, values 0..1), overlay on the crop as shown to the model, and the class explained.

        ``class_code`` defaults to the predicted class.
        """
        from .explain import overlay

        cam, rgb, class_code = self.cam(image, class_code, method)
        return cam, overlay(rgb, cam, opacity), class_code

    def cam(self, image, class_code: str | None = None, method: str = "gradcam") -> tuple[np.ndarray, np.ndarray, str]:
        """(CAM map, the crop as the model sees it (RGB uint8), class explained), from one decode of ``image``."""
        img = resize_rgb(image if hasattr(image, "mode") else decode_image(image), self.cfg)
        rgb, x = np.asarray(img), normalize(to_uint8_tensor(img), self.cfg)
        if class_code is None:
            class_code = self.classes[int(np.argmax(self.logits(x.unsqueeze(0))[0]))]
        if class_code not in self.classes:
            raise ValueError(f"class {class_code!r} is not covered by this model ({', '.join(self.classes)})")
        from .explain import compute_cam

        with self._cam_lock:
            cam = compute_cam(self._cam_net(), self.bundle.backbone, x.to(self.torch_device),
                              self.classes.index(class_code), method)
        return cam, rgb, class_code

    def _cam_net(self) -> torch.nn.Module:
        """Grad-CAM's model (call under ``_cam_lock``): the torch engine predicts with ``self.model``, so Grad-CAM's
        hooks get a copy of it; with ONNX predicting, ``self.model`` is Grad-CAM's own."""
        if self._cam_model is None:
            self._cam_model = (copy.deepcopy(self.model) if self.engine == "torch" else self.model).eval()
        return self._cam_model

    def warm_explanations(self) -> None:
        """Build Grad-CAM's torch model now (imports timm and pytorch-grad-cam: seconds), so a reviewer's first heatmap
        does not wait."""
        with IMPORT_LOCK:
            import pytorch_grad_cam  # noqa: F401

        with self._cam_lock:
            self._cam_net()
