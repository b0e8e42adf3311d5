"""Safe image decoding and the one preprocessing path shared by training and inference.

``decode_image`` turns bytes or a path into an RGB ``PIL.Image``: it checks the file size,
then the pixel count and the smallest side from the header before decoding anything
(decompression bombs, icons), opens only the formats the app accepts (JPEG, PNG, TIFF, BMP,
GIF, WebP: no other Pillow plugin, such as EPS with its Ghostscript call, is ever reached),
applies the EXIF orientation, reduces 16-bit and palette/alpha/CMYK/greyscale images to 8-bit
RGB (16-bit: the image's maximum becomes 255; transparent pixels become white, like the
slide background) and, for multi-frame files (GIF, TIFF), takes the first frame. Any failure
raises ``ImageDecodeError`` with a readable reason, never another exception; callers report
it by file name and go on.

``DataConfig`` travels inside every bundle (input size, mean/std, optional seed-003
denoise + sharpen), so no caller ever re-types a mean or a size.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 4096 * 4096  # a single-cell crop is ~250x250; 16 MP is already generous
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
MIN_SIDE = 32  # px; smaller is an icon or a thumbnail, not a single-cell crop (those are ~250 px)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")
DECODE_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "DIB", "GIF", "WEBP")  # the Pillow plugins of IMAGE_SUFFIXES
# what an unrecognised file most likely is, for a clearer message (first bytes -> words)
_NOT_IMAGE_SIGNATURES = ((b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip file"),
                         (b"%!PS", "a PostScript file"))

SHARPEN_KERNEL = np.array([[-1, -1, -1], [-1, 9, -1], [-1, -1, -1]], dtype=np.float32)


class ImageDecodeError(ValueError):
    """A file that cannot be used as an image; the message says why in plain words."""


@dataclass(frozen=True)
class DataConfig:
    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    denoise_sharpen: bool = False  # seed 003: non-local means denoising + 3x3 sharpening
    interpolation: str = "bilinear"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        d = dict(d)
        d["mean"] = tuple(d["mean"])
        d["std"] = tuple(d["std"])
        known = {k: d[k] for k in ("input_size", "mean", "std", "denoise_sharpen", "interpolation", "extra") if k in d}
        return cls(**known)


def _to_rgb(img: Image.Image) -> Image.Image:
    # float32, in place: a 16 MP 16-bit image costs ~64 MB here, not the ~400 MB of float64 temporaries
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.array(img, dtype=np.float32)  # a writable copy
        hi = float(a.max()) if a.size else 0.0
        if hi > 255:
            a *= 255.0 / hi
        np.clip(a, 0, 255, out=a)
        img = Image.fromarray(a.astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.nan_to_num(np.array(img, dtype=np.float32), copy=False)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
        if hi > lo:
            a -= lo
            a *= 255.0 / (hi - lo)
        else:
            a[:] = 0
        img = Image.fromarray(np.clip(a, 0, 255, out=a).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent -> white, like the slide background
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _what_is(data: bytes) -> str:
    """' (it looks like a PDF document)' or '' : a hint for a file no image decoder recognised."""
    what = next((w for sig, w in _NOT_IMAGE_SIGNATURES if data.startswith(sig)), "")
    if not what and data[128:132] == b"DICM":
        what = "a DICOM file; export the crops as JPEG or PNG"
    if not what:
        head = data[:1024]
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
            what = "text"
    return f" (it looks like {what})" if what else ""


def decode_image(source: bytes | str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES, min_side: int = MIN_SIDE) -> Image.Image:
    """Decode ``source`` (bytes or a path) into an 8-bit RGB image, or raise ``ImageDecodeError``."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        try:
            size = p.stat().st_size
            if size > max_bytes:
                raise ImageDecodeError(f"file is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit")
            data = p.read_bytes()
        except OSError as exc:  # gone, a folder, no permission
            raise ImageDecodeError(f"cannot read file ({exc.strerror or exc})") from None
    else:
        data = bytes(source)
    if not data:
        raise ImageDecodeError("file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageDecodeError(f"file is {len(data) / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
            w, h = img.size  # from the header: nothing is decoded yet
            if w * h > max_pixels:
                raise ImageDecodeError(f"image claims {w}x{h} pixels, over the {max_pixels:,}-pixel limit")
            if w < 1 or h < 1:
                raise ImageDecodeError("image has no pixels")
            if min(w, h) < min_side:
                raise ImageDecodeError(f"image is too small ({w}x{h} px) to be a single-cell crop "
                                       f"(at least {min_side} px a side)")
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(f"image claims more pixels than the {max_pixels:,}-pixel limit "
                               "(possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not a recognised image format{_what_is(data)}") from None
    except MemoryError:
        raise ImageDecodeError("not enough memory to decode this image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"image data is corrupt or truncated ({exc})") from None
    except Exception as exc:  # a decoder tripping over malformed data in some other way: still this file's problem
        raise ImageDecodeError(f"image data is corrupt ({type(exc).__name__}: {exc})") from None


def denoise_sharpen(rgb: np.ndarray) -> np.ndarray:
    """Seed 003's enhancement: OpenCV non-local means denoising, then a 3x3 sharpening kernel."""
    import cv2

    den = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(rgb), None, 10, 10, 7, 21)
    return cv2.filter2D(den, -1, SHARPEN_KERNEL)


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def resize_rgb(img: Image.Image, cfg: DataConfig) -> Image.Image:
    """The whole crop, squashed to a square of ``cfg.input_size`` (the cell stays whole; nothing is cropped)."""
    if cfg.denoise_sharpen:
        img = Image.fromarray(denoise_sharpen(np.asarray(img)))
    s = cfg.input_size
    if img.size != (s, s):
        img = img.resize((s, s), _RESAMPLE.get(cfg.interpolation, Image.BILINEAR), reducing_gap=None)
    return img


def to_uint8_array(img: Image.Image) -> np.ndarray:
    """HWC uint8 PIL image -> CHW uint8 array, a view of one HWC copy of the pixels (numpy only: the ONNX path
    runs without importing torch)."""
    return np.array(img, dtype=np.uint8, copy=True).transpose(2, 0, 1)


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """HWC uint8 PIL image -> CHW uint8 tensor (no copy of the pixel data beyond numpy's)."""
    import torch

    return torch.from_numpy(to_uint8_array(img))


def normalize(x, cfg: DataConfig):
    """uint8 (or 0..1 float) CHW/NCHW tensor or array -> normalised float32 of the same kind (a new one: ``x`` is
    unchanged).

    uint8 input is converted once (any memory layout in, contiguous out) and scaled in place by one multiply-add
    per channel: (x / 255 - mean) / std as x * 1/(255 std) - mean/std (equal within float32 rounding)."""
    if isinstance(x, np.ndarray):
        mean = np.asarray(cfg.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(cfg.std, dtype=np.float32).reshape(-1, 1, 1)
        if x.dtype == np.uint8:
            y = np.ascontiguousarray(x, dtype=np.float32)
            y *= np.float32(1.0) / (np.float32(255.0) * std)
            y += -mean / std
            return y
        return (x.astype(np.float32) - mean) / std
    import torch

    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    if x.dtype == torch.uint8:
        y = x.to(torch.float32, memory_format=torch.contiguous_format)
        return y.mul_(1.0 / (255.0 * std)).add_(-mean / std)
    return (x.float() - mean) / std


def stack_crops(crops: list):
    """Resized uint8 CHW crops (tensors, or arrays from ``to_uint8_array``) -> one NCHW uint8 batch of the same kind.
    Crops from ``to_uint8_tensor`` / ``to_uint8_array`` are views of HWC pixels: they are stacked as HWC (a plain copy
    each) and the batch is turned once, by ``normalize``'s single conversion, instead of a strided copy per crop."""
    if crops and isinstance(crops[0], np.ndarray):
        if all(c.transpose(1, 2, 0).flags.c_contiguous for c in crops):
            return np.stack([c.transpose(1, 2, 0) for c in crops]).transpose(0, 3, 1, 2)
        return np.stack(crops)
    import torch

    if all(t.permute(1, 2, 0).is_contiguous() for t in crops):
        return torch.stack([t.permute(1, 2, 0) for t in crops]).permute(0, 3, 1, 2)
    return torch.stack(crops)


def preprocess(img: Image.Image, cfg: DataConfig) -> torch.Tensor:
    """Decoded RGB image -> normalised CHW float tensor for the model: the inference path."""
    return normalize(to_uint8_tensor(resize_rgb(img, cfg)), cfg)


def thumbnail_jpeg(img: Image.Image, max_side: int = 256, quality: int = 90) -> bytes:
    """A small JPEG of the crop for storage and galleries (a 250 px crop is kept at full size)."""
    im = img.copy()
    im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def thumbnail_of(img: Image.Image, source=None, max_side: int = 256) -> bytes:
    """The stored thumbnail of a decoded crop: the uploaded JPEG itself when it is already small enough (no
    re-encoding, no second decode), else ``thumbnail_jpeg``."""
    if isinstance(source, (bytes, bytearray, memoryview)) and bytes(source[:3]) == b"\xff\xd8\xff" \
            and max(img.size) <= max_side:
        return bytes(source)
    return thumbnail_jpeg(img, max_side)


def load_image(source: bytes | str | Path, cfg: DataConfig, **limits) -> torch.Tensor:
    return preprocess(decode_image(source, **limits), cfg)
