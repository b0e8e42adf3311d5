"""The metrics that training, evaluation and the app all show: computed here once.

Classification metrics come from scikit-learn; calibration (expected calibration error,
temperature scaling) is implemented here because scikit-learn has no multi-class ECE.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of the proportion k / n (the figure's uncertainty on n items)."""
    p, d = k / n, 1 + z * z / n
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [float((p + z * z / (2 * n)) / d - half), float((p + z * z / (2 * n)) / d + half)]


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al. 2017)."""
    probs = np.asarray(probs)
    y = np.asarray(y)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> list[dict]:
    """Per-bin mean confidence, accuracy and count, for a reliability diagram."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            out.append({"lo": float(lo), "hi": float(hi), "confidence": float(conf[m].mean()),
                        "accuracy": float(correct[m].mean()), "count": int(m.sum())})
    return out


def fit_temperature(logits: np.ndarray, y: np.ndarray, max_iter: int = 200) -> float:
    """Temperature minimising the negative log-likelihood of ``y`` (fit on the validation split only)."""
    import torch

    lg = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lg / log_t.exp(), yt)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp().item())


def classification_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Everything the evaluation JSON, the model card and the comparison page show."""
    y = np.asarray(y)
    probs = np.asarray(probs)
    pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    from sklearn import metrics as skm  # imported here: the app's start-up never needs scikit-learn

    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    out: dict = {
        "n": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "macro_f1": float(skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(skm.f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        "ece": expected_calibration_error(probs, y),
        "nll": float(skm.log_loss(y, np.clip(probs, 1e-12, 1), labels=labels)),
    }
    present = [i for i in labels if (y == i).any() and (y != i).any()]
    roc = {}
    for i in present:
        fpr, tpr, _ = skm.roc_curve(y == i, probs[:, i])
        # thin the curve for storage: at most ~100 points, endpoints kept
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 100)).astype(int))
        roc[classes[i]] = {"auc": float(skm.roc_auc_score(y == i, probs[:, i])),
                           "fpr": [round(float(v), 4) for v in fpr[keep]],
                           "tpr": [round(float(v), 4) for v in tpr[keep]]}
    out["roc"] = roc
    out["macro_auc_ovr"] = float(np.mean([v["auc"] for v in roc.values()])) if roc else float("nan")
    return out
