"""Every registered backbone builds, runs, and yields a non-constant Grad-CAM map of the input's size."""

import numpy as np
import pytest
import torch

from bmcore.backbones import BACKBONES, create, resolve_layer
from bmcore.explain import CAM_METHODS, compute_cam
from bmcore.forward import split_forward
from bmcore.preprocess import DataConfig, load_image
from bmcore.weights import build_pretrained, load_in_key_order, package_weights_file, read_state_dict

SIZE = 96


@pytest.fixture(scope="module")
def crop_tensor(crop_path):
    return load_image(crop_path, DataConfig(SIZE))


@pytest.mark.parametrize("key", sorted(BACKBONES))
def test_backbone_forward_and_gradcam(key, crop_tensor):
    torch.manual_seed(0)
    model = create(key, 8, img_size=SIZE).eval()
    with torch.no_grad():
        out = model(crop_tensor.unsqueeze(0))
        feats, logits = split_forward(model, crop_tensor.unsqueeze(0))
    assert out.shape == (1, 8) and torch.isfinite(out).all()
    # the OOD gate's features come from the same pass, stopped before the classifier: logits must be identical
    assert feats.dim() == 2 and feats.shape[1] == model.get_classifier().in_features
    assert torch.equal(logits, out)
    cam = compute_cam(model, key, crop_tensor, class_index=int(out.argmax()), method="gradcam")
    assert cam.shape == (SIZE, SIZE)
    assert np.isfinite(cam).all() and cam.std() > 1e-4, "Grad-CAM map is constant"


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam", "layercam", "xgradcam"])
@pytest.mark.parametrize("key", ["mobilenetv2", "vit_small"])
def test_cam_methods_cnn_and_transformer(key, method, crop_tensor):
    torch.manual_seed(0)
    model = create(key, 8, img_size=SIZE).eval()
    cam = compute_cam(model, key, crop_tensor, 3, method)
    assert cam.shape == (SIZE, SIZE) and cam.std() > 1e-4


def test_unknown_cam_method_rejected(crop_tensor):
    with pytest.raises(ValueError, match="unknown CAM method"):
        compute_cam(create("small_cnn", 8), "small_cnn", crop_tensor, 0, "magic")
    assert {"gradcam", "gradcam++", "eigencam", "layercam"} <= set(CAM_METHODS)


def test_negative_index_layer_paths():
    m = create("vit_small", 8, img_size=SIZE)
    assert resolve_layer(m, "blocks.-1.norm1") is m.blocks[-1].norm1


@pytest.mark.parametrize("key", [k for k, b in BACKBONES.items() if b.weights_package])
def test_offline_imagenet_weights_load_and_are_recorded(key):
    if package_weights_file(BACKBONES[key]) is None:
        pytest.skip(f"{BACKBONES[key].weights_package.package} not installed")
    model, source = build_pretrained(key, 8, "auto")
    assert source.startswith(f"pip:{BACKBONES[key].weights_package.package}/")
    fresh = create(key, 8)
    # the trunk differs from a random init, the new head has the task's width
    first = next(iter(model.state_dict()))
    assert not torch.allclose(model.state_dict()[first], fresh.state_dict()[first])
    assert model.get_classifier().out_features == 8


def test_key_order_mapping_refuses_other_architectures():
    src = read_state_dict(package_weights_file(BACKBONES["mobilenetv2"])) if package_weights_file(
        BACKBONES["mobilenetv2"]) else create("mobilenetv2", 1000).state_dict()
    with pytest.raises(ValueError, match="not the same architecture|shape mismatch"):
        load_in_key_order(create("efficientnet_lite0", 1000), src)


def test_random_init_is_recorded():
    _, source = build_pretrained("resnet50", 8, "none")
    assert source == "random-init"
