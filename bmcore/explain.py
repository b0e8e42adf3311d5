"""Grad-CAM family through pytorch-grad-cam, with the target layer and reshape from the registry.

pytorch-grad-cam is imported when a map is first computed or drawn (seconds of start-up a page without a heatmap,
and the prediction path, never pay)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import IMPORT_LOCK
from .backbones import get_backbone, target_layer

CAM_METHODS = {  # method -> pytorch_grad_cam class
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
    "xgradcam": "XGradCAM",
    "scorecam": "ScoreCAM",
}


METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "EigenCAM", "layercam": "LayerCAM",
                "xgradcam": "XGradCAM", "scorecam": "Score-CAM"}
# methods whose map does not depend on the class asked for (EigenCAM: the first principal component of the target
# layer's activations)
CLASS_AGNOSTIC = frozenset({"eigencam"})


def cam_caption(method: str, code: str, name: str, model: str) -> str:
    """The caption under a heatmap: which class it explains, or that it explains none."""
    m = METHOD_NAMES.get(method, method)
    if method in CLASS_AGNOSTIC:
        return f"{m} by {model}: class-agnostic, the same map whatever class is chosen"
    return f"{m} for {code} ({name}) by {model}"


def cam_sentence(method: str) -> str:
    """How to read the heatmap, in one sentence a reviewer can act on."""
    if method in CLASS_AGNOSTIC:
        return ("EigenCAM is class-agnostic: red areas are where the model's last features vary most, whatever the "
                "class; it does not say what raised any class's score. A heatmap shows where the model looked, not "
                "that it is right.")
    return ("Red areas raised the score of the explained class most (scale beside the heatmap). A heatmap shows where "
            "the model looked, not that it is right.")


def token_reshape(num_prefix_tokens: int):
    """(B, N, C) transformer tokens -> (B, C, h, w) map, dropping class/register tokens."""

    def reshape(t: torch.Tensor) -> torch.Tensor:
        t = t[:, num_prefix_tokens:, :]
        side = int(round(t.shape[1] ** 0.5))
        return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    return reshape


def compute_cam(model: nn.Module, backbone: str, x: torch.Tensor, class_index: int,
                method: str = "gradcam") -> np.ndarray:
    """A (H, W) map in [0, 1] for one normalised CHW image; gradients are enabled here on purpose."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
    with IMPORT_LOCK:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    b = get_backbone(backbone)
    reshape = token_reshape(getattr(model, "num_prefix_tokens", 1)) if b.transformer else None
    with torch.enable_grad(), torch.inference_mode(False):
        inp = x.unsqueeze(0).clone().float().requires_grad_(True)
        cam_class = getattr(pytorch_grad_cam, CAM_METHODS[method])
        with cam_class(model=model, target_layers=[target_layer(model, backbone)], reshape_transform=reshape) as cam:
            if method == "scorecam":
                cam.batch_size = 16
            grayscale = cam(input_tensor=inp, targets=[ClassifierOutputTarget(int(class_index))])
    m = np.nan_to_num(grayscale[0].astype(np.float32))
    return m


def overlay(rgb: np.ndarray, cam: np.ndarray, opacity: float = 0.5, *, scale: bool = True) -> np.ndarray:
    """Heatmap over the RGB crop (uint8 HxWx3, CAM resized to it), with its colour scale at the right (``scale``)."""
    import cv2

    with IMPORT_LOCK:
        from pytorch_grad_cam.utils.image import show_cam_on_image

    h, w = rgb.shape[:2]
    if cam.shape != (h, w):
        cam = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
    out = show_cam_on_image(rgb.astype(np.float32) / 255.0, np.clip(cam, 0, 1), use_rgb=True,
                            image_weight=1.0 - float(opacity))
    return np.concatenate([out, colour_scale(h)], axis=1) if scale else out


def colour_scale(h: int) -> np.ndarray:
    """A vertical colour bar (HxWx3 uint8, white margin) of the heatmap's colour map (the JET map pytorch-grad-cam
    draws with), from 0 (bottom: the class's score was raised least) to 1 (top: raised most), labelled."""
    import cv2

    w = max(28, h // 6)
    bar_w, top, bottom = max(8, w // 3), max(10, h // 14), max(10, h // 14)
    out = np.full((h, w, 3), 255, np.uint8)
    ramp = np.linspace(255, 0, max(1, h - top - bottom)).astype(np.uint8)[:, None]
    colours = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)  # (n, 1, 3)
    out[top:h - bottom, 2:2 + bar_w] = colours
    font, fs = cv2.FONT_HERSHEY_SIMPLEX, max(0.25, h / 700)
    cv2.putText(out, "1", (4 + bar_w, top + 8), font, fs, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(out, "0", (4 + bar_w, h - bottom), font, fs, (0, 0, 0), 1, cv2.LINE_AA)
    return out
