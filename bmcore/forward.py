"""The model's forward pass on torch, written once: the test-time views, the split into penultimate features and
logits, and the micro-batched, TTA-averaged logits.

Imported by ``bmcore.predictor`` (the torch engine), ``bmcore.engine`` (ONNX export and the TTA views of the ONNX
path) and ``train.train`` (validation), so that what training selects on is what the app runs. Nothing here imports
another module of bmcore.
"""

from __future__ import annotations

import numpy as np
import torch


def cpu_bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 4 test-time views used when a bundle asks for TTA: identity, two flips, transpose.

    Views keep the input's memory format: a flipped channels-last tensor is no longer channels-last,
    and the convolutions would silently take a path ~2.5x slower on a CPU.
    """
    views = [x, x.flip(-1), x.flip(-2), x.transpose(-2, -1)]
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    return views


def split_forward(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits): the same computation as ``model(x)``, stopped before the classifier once."""
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    return feats, model.get_classifier()(feats)


def forward_logits(model: torch.nn.Module, x: torch.Tensor, device: torch.device, *, dtype: torch.dtype | None = None,
                   channels_last: bool = True, tta: bool = False, batch_size: int = 8, features: bool = False):
    """Logits of a normalised NCHW batch in micro-batches, TTA-averaged: the one inference forward pass.

    Used by ``Predictor`` and by training's validation, so what is selected on validation is what the app runs.
    With ``features=True`` returns ``(logits, penultimate features)``, both TTA-averaged, for the OOD gate.
    """
    out, feats = [], []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device, non_blocking=True)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            views = dihedral_views(xb) if tta else [xb]
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                if features:
                    pairs = [split_forward(model, v) for v in views]
                    feats.append(torch.stack([f.float() for f, _ in pairs]).mean(0).cpu().numpy())
                    lg = torch.stack([lg.float() for _, lg in pairs]).mean(0)
                else:
                    lg = torch.stack([model(v).float() for v in views]).mean(0)
            out.append(lg.cpu().numpy())
    logits = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    if features:
        return logits, (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32))
    return logits
