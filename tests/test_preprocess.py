import io
import zlib
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from bmcore.preprocess import DataConfig, ImageDecodeError, decode_image, denoise_sharpen, load_image, preprocess


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_real_crop_decodes_to_rgb_250(crop_path):
    img = decode_image(crop_path)
    assert img.mode == "RGB" and img.size == (250, 250)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (80, 40), (200, 10, 10))
    img.paste((10, 10, 200), (0, 0, 40, 40))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = decode_image(_bytes(img, "JPEG", exif=exif, quality=95))
    assert out.size == (40, 80)
    top = np.asarray(out)[:5].mean(axis=(0, 1))
    assert top[2] > top[0]  # the blue half is now on top


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "LA", "I;16", "1"])
def test_any_mode_becomes_rgb(mode):
    base = Image.linear_gradient("L").resize((32, 32))
    img = base.convert(mode) if mode != "I;16" else Image.fromarray((np.asarray(base).astype(np.uint16) * 257))
    fmt = "JPEG" if mode in ("L", "CMYK") else ("TIFF" if mode == "I;16" else "PNG")
    out = decode_image(_bytes(img, fmt))
    assert out.mode == "RGB" and out.size == (32, 32)
    if mode == "I;16":  # 16-bit scaled down, not clipped to white
        a = np.asarray(out)
        assert a.min() < 10 and a.max() > 240 and len(np.unique(a)) >= 30


def test_transparent_palette_png_composited_on_white():
    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (0, 0, 16, 32))
    out = np.asarray(decode_image(_bytes(img.convert("P"), "PNG", transparency=0)))
    assert out.shape == (32, 32, 3)


def test_animated_gif_takes_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = np.asarray(decode_image(buf.getvalue()))
    assert out[..., 0].mean() > out[..., 2].mean()


def test_empty_text_and_truncated_are_clear_errors(crop_path):
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_image(b"%PDF-1.4 this is not an image")
    data = crop_path.read_bytes()
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 3])


def test_decompression_bomb_refused_before_decoding():
    # a PNG whose header claims 30000 x 30000 pixels
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError, match="pixel limit"):
        decode_image(png)


def test_oversized_file_refused(tmp_path):
    with pytest.raises(ImageDecodeError, match="over the"):
        decode_image(b"\xff" * 2048, max_bytes=1024)


def test_normalisation_matches_data_config():
    cfg = DataConfig(input_size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    x = preprocess(Image.new("RGB", (50, 30), (255, 102, 0)), cfg)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expect = torch.tensor([(1.0 - 0.5) / 0.2, (0.4 - 0.4) / 0.25, (0.0 - 0.3) / 0.5])
    assert torch.allclose(x.mean(dim=(1, 2)), expect, atol=1e-5)


def test_batch_of_crops_normalises_as_the_formula_and_leaves_its_input_alone():
    """``stack_crops`` + ``normalize`` (one conversion, in-place scaling) equal (x / 255 - mean) / std per crop, come
    out contiguous NCHW whatever the crops' memory layout, and a float input is never scaled in place."""
    from bmcore.preprocess import normalize, stack_crops, to_uint8_tensor

    cfg = DataConfig(input_size=24, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    rng = np.random.default_rng(0)
    views = [to_uint8_tensor(Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))) for _ in range(5)]
    dense = [v.contiguous() for v in views]  # CHW-contiguous crops take the plain stack
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    want = torch.stack([(v.double() / 255 - mean.double()) / std.double() for v in views])
    for crops in (views, dense):
        x = normalize(stack_crops(crops), cfg)
        assert x.shape == (5, 3, 24, 24) and x.dtype == torch.float32 and x.is_contiguous()
        assert torch.allclose(x.double(), want, atol=2e-6)
    f = torch.rand(2, 3, 24, 24)
    before = f.clone()
    normalize(f, cfg)
    assert torch.equal(f, before)


def test_denoise_sharpen_switch(crop_path):
    rgb = np.asarray(decode_image(crop_path))
    out = denoise_sharpen(rgb)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() > 1.0  # it changed the crop
    flat = np.full((32, 32, 3), 120, np.uint8)
    # the kernel sums to 1, so a flat patch stays flat (NLM's Lab round trip may move it by a grey level)
    assert np.abs(denoise_sharpen(flat).astype(int) - 120).max() <= 2
    on = load_image(crop_path, DataConfig(64, denoise_sharpen=True))
    off = load_image(crop_path, DataConfig(64))
    assert not torch.allclose(on, off)
