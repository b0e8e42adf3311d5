"""The gate in front of the classifier: is this a bone marrow single-cell crop the model can judge?

A model trained on 250 px single-cell crops will still give *some* class, often confidently, for a
whole smear field, a blank or blurred crop, a photo or a screenshot. The gate refuses those with a
reason instead of a class. It has two parts, both fitted from data and stored in the bundle:

* **Image quality** on the crop as the model sees it (resized RGB): a blank/featureless crop (grey
  level spread far below any training crop) and an out-of-focus crop (variance of the Laplacian far
  below any training crop). Thresholds are a fraction of a low percentile of the training crops.
* **Familiarity** of the model's own view of the image, combining a feature-space distance with the
  energy of the logits (Liu et al. 2020). The distance is the smallest class-conditional Mahalanobis
  distance (Lee et al. 2018) of the penultimate features, with one covariance shared by the classes,
  computed in the top principal directions of the within-class scatter of the *training* features.
  Both scores are standardised on held-out in-distribution crops (the validation split) and
  averaged. The threshold is the quantile of that score on the validation split that rejects
  ``target_rejection`` of them (default 4%, below the 5% ceiling so the figure holds on unseen data).

The arrays live in ``ood.safetensors`` inside the bundle, checked against a sha256 in ``bundle.json``
like the weights; the thresholds and what they were fitted on live in ``bundle.json["ood"]``, the figures
measured as the app runs (``train.ood``) in the bundle's ``eval_ood.json``.

Before any of that, an **input-size rule** refuses an image that is not a single-cell crop by its size alone
(``size_refusal``): a camera field or a mosaic of cells. The model sees every image squashed to its input
size, so an image whose longer side is more than ``MAX_CROP_SCALE`` (2.5) times the side of the training
crops (``Bundle.crop_side``: 250 px, so at most 625 px) shows its cells at under 0.4x the scale the model
learnt if it was taken at the training magnification (a field: many cells, each shrunk to a few pixels), or
one cell magnified 2.5x beyond the training crops if it is a single cell. Neither is what the model knows, and
0.2-0.4x is where the familiarity score was measured to be weak ("lower magnification" in ``eval_ood.json``).
Crops up to 2.5x the training side (e.g. 500x500 for a 250 px model) pass this rule and go to the gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

OOD_FILE = "ood.safetensors"
# what the familiarity score knows: the model's view of the image is far from its training crops (not that it is no
# cell: about 4 in 100 genuine held-out crops score so, bench/results/gate_as_run.json)
REASON_OOD = "unlike the model's training crops"
REASON_BLANK = "blank or featureless image"
REASON_BLUR = "out of focus"
REASON_FIELD = "too large for a single-cell crop (a camera field or a mosaic of cells?)"
MAX_CROP_SCALE = 2.5  # longest side accepted, in training-crop sides (see the module's docstring)
DEFAULT_CROP_SIDE = 250  # px: the Matek et al. crops every bundle of this project was trained on


def size_refusal(size: tuple[int, int], crop_side: int) -> str:
    """Why an image of ``size`` (w, h) px is not a single-cell crop for a model trained on ``crop_side`` px crops
    ("" if its size is acceptable): its longer side is over ``MAX_CROP_SCALE`` x ``crop_side``."""
    w, h = size
    limit = round(MAX_CROP_SCALE * crop_side)
    if max(w, h) <= limit:
        return ""
    return (f"image is {w}x{h} px, {REASON_FIELD}: this model was trained on {crop_side} px crops and accepts at "
            f"most {limit} px a side; crop the cells first")


def quality_stats(rgb: np.ndarray) -> tuple[float, float]:
    """(grey-level standard deviation, variance of the Laplacian) of an HxWx3 uint8 crop at the model's input size."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return float(grey.std()), float(cv2.Laplacian(grey, cv2.CV_64F).var())


def energy(logits: np.ndarray) -> np.ndarray:
    """Negative free energy, -logsumexp(logits): higher means less familiar."""
    m = logits.max(1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(logits - m).sum(1)))


@dataclass
class OODGate:
    mean: np.ndarray          # (D,) training feature mean
    components: np.ndarray    # (k, D) top within-class principal directions
    scale: np.ndarray         # (k,) their standard deviations (shrunk)
    class_means: np.ndarray   # (C, k) class means in the whitened subspace
    norm: dict                # {"maha": [mu, sd], "energy": [mu, sd]} on validation crops
    threshold: float          # combined score above which a crop is refused
    min_std: float            # grey std below which a crop is blank
    min_focus: float          # variance of the Laplacian below which a crop is out of focus

    # -- scoring -----------------------------------------------------------------------------------
    def mahalanobis(self, feats: np.ndarray) -> np.ndarray:
        z = ((feats - self.mean) @ self.components.T) / self.scale
        d = ((z[:, None, :] - self.class_means[None]) ** 2).sum(-1)
        return np.sqrt(d.min(1))

    def score(self, feats: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The combined unfamiliarity score (mean of the two standardised scores); higher is less familiar."""
        (mm, ms), (em, es) = self.norm["maha"], self.norm["energy"]
        return 0.5 * ((self.mahalanobis(feats) - mm) / ms + (energy(logits) - em) / es)

    def reasons(self, feats: np.ndarray, logits: np.ndarray, quality: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Per crop: the reason it is refused ("" if accepted), and its score. ``quality``: (N, 2) from quality_stats."""
        s = self.score(feats, logits) if len(feats) else np.zeros(0)
        out = []
        for (std, focus), si in zip(quality, s):
            if std < self.min_std:
                out.append(REASON_BLANK)
            elif focus < self.min_focus:
                out.append(REASON_BLUR)
            elif si > self.threshold:
                out.append(REASON_OOD)
            else:
                out.append("")
        return out, s

    # -- storage -----------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k), dtype=np.float32))
                for k in ("mean", "components", "scale", "class_means")}

    def settings(self) -> dict:
        return {"norm": self.norm, "threshold": self.threshold, "min_std": self.min_std, "min_focus": self.min_focus}

    @classmethod
    def from_parts(cls, arrays: dict, settings: dict) -> "OODGate":
        a = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
        return cls(mean=a["mean"], components=a["components"], scale=a["scale"], class_means=a["class_means"],
                   norm={k: list(map(float, v)) for k, v in settings["norm"].items()},
                   threshold=float(settings["threshold"]), min_std=float(settings["min_std"]),
                   min_focus=float(settings["min_focus"]))


def fit_gate(train_feats: np.ndarray, train_labels: np.ndarray, train_quality: np.ndarray, val_feats: np.ndarray,
             val_logits: np.ndarray, val_quality: np.ndarray, *, k: int = 64, shrink: float = 1e-3,
             target_rejection: float = 0.04, quality_fraction: float = 0.5,
             quality_percentile: float = 0.5) -> OODGate:
    """Fit the gate on training features and calibrate its threshold on held-out in-distribution crops."""
    f = np.asarray(train_feats, np.float64)
    y = np.asarray(train_labels)
    mean = f.mean(0)
    classes = np.unique(y)
    centred = np.concatenate([f[y == c] - f[y == c].mean(0) for c in classes])
    # top principal directions of the within-class scatter = the shared class covariance's main axes
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    k = int(min(k, vt.shape[0]))
    var = sv[:k] ** 2 / max(1, len(centred) - len(classes))
    scale = np.sqrt(var + shrink * var.mean())
    comps = vt[:k]
    z = ((f - mean) @ comps.T) / scale
    class_means = np.stack([z[y == c].mean(0) for c in classes])
    q = np.asarray(train_quality, np.float64)
    min_std = quality_fraction * float(np.percentile(q[:, 0], quality_percentile))
    min_focus = quality_fraction * float(np.percentile(q[:, 1], quality_percentile))
    gate = OODGate(mean=mean, components=comps, scale=scale, class_means=class_means, norm={}, threshold=np.inf,
                   min_std=min_std, min_focus=min_focus)
    vm, ve = gate.mahalanobis(np.asarray(val_feats, np.float64)), energy(np.asarray(val_logits, np.float64))
    gate.norm = {"maha": [float(vm.mean()), float(vm.std() or 1.0)], "energy": [float(ve.mean()), float(ve.std() or 1.0)]}
    vq = np.asarray(val_quality, np.float64)
    passes_quality = (vq[:, 0] >= min_std) & (vq[:, 1] >= min_focus)
    s = gate.score(np.asarray(val_feats, np.float64), np.asarray(val_logits, np.float64))[passes_quality]
    # what the quality checks already refuse counts towards the rejection budget
    left = max(0.0, target_rejection - (1 - passes_quality.mean()))
    gate.threshold = float(np.quantile(s, 1 - left / max(passes_quality.mean(), 1e-9))) if len(s) else float("inf")
    return gate


__all__ = ["OODGate", "fit_gate", "quality_stats", "energy", "size_refusal", "OOD_FILE", "REASON_OOD", "REASON_BLANK",
           "REASON_BLUR", "REASON_FIELD", "MAX_CROP_SCALE", "DEFAULT_CROP_SIDE"]
