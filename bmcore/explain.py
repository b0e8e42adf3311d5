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


def overlay(rgb: np.ndarray, cam: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """Heatmap over the RGB crop (uint8 HxWx3, CAM resized to it)."""
    import cv2

    with IMPORT_LOCK:
        from pytorch_grad_cam.utils.image import show_cam_on_image

    h, w = rgb.shape[:2]
    if cam.shape != (h, w):
        cam = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, np.clip(cam, 0, 1), use_rgb=True,
                             image_weight=1.0 - float(opacity))
