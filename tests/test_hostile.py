"""Bad input never crashes anything and loses nothing.

A corpus of hostile and odd files, generated here (real crops are only read from ../shared/data at
test time), goes through the library (decode_image, input collection, Predictor on the default
bundle), the batch command line and the Classify page. Each bad file must come back with a clear
reason next to its name, every good file in the same batch must be classified as it would be on its
own, in order; odd but valid images must decode to the right RGB pixels; the bombs must be refused
before their pixels (or members) are held in memory; and nothing named by an archive is ever
written anywhere.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bmcore.inputs import ARCHIVE_EXPANSION_FLOOR, MAX_FILES, enforce_limit, from_paths, from_upload, from_zip
from bmcore.preprocess import DEFAULT_MAX_BYTES, MIN_SIDE, ImageDecodeError, decode_image
from tests.test_app import upload_key, wait_classified
from tests.conftest import DEV_CLASSES, REPO, actor, make_bundle

SIZE_LIMIT_MSG = f"over the {DEFAULT_MAX_BYTES / 1e6:.0f} MB limit"
SPRAY_MEMBERS, SPRAY_MEMBER_SIZE = 700, 999_999  # each just under the per-member bomb check's 1 MB floor


# -- building the corpus ---------------------------------------------------------------------------

def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(w: int, h: int, depth: int, colour: int, rows) -> bytes:
    """A PNG streamed row by row (``rows`` yields filtered scanlines), so a huge one costs no memory to build."""
    z = zlib.compressobj(6)
    idat = b"".join(z.compress(r) for r in rows) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
            + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def bomb_png(w: int = 40000, h: int = 40000) -> bytes:
    """A header claiming w x h RGB pixels, with almost no data behind it: a decompression bomb."""
    return _png(w, h, 8, 2, [b"\x00" * 1000])


def flat_png(w: int, h: int) -> bytes:
    """A real, valid w x h black RGB PNG (~100 KB for 6000 x 6000)."""
    row = b"\x00" + bytes(3 * w)
    return _png(w, h, 8, 2, (row for _ in range(h)))


def blocky_png(a: np.ndarray, scale: int) -> bytes:
    """``a`` (H x W x 3 uint8, or H x W uint16) upscaled ``scale`` times by pixel repetition, as a PNG.

    Repeated rows use the PNG 'Up' filter (all zeros), so a 4000 x 4000 crop is a few hundred KB.
    """
    grey16 = a.ndim == 2
    h, w = a.shape[:2]
    up = np.repeat(a, scale, axis=1)
    if grey16:
        up = up.astype(">u2")
    zero = b"\x02" + bytes(up[0].nbytes)

    def rows():
        for r in range(h):
            yield b"\x00" + up[r].tobytes()
            for _ in range(scale - 1):
                yield zero

    return _png(w * scale, h * scale, 16 if grey16 else 8, 0 if grey16 else 2, rows())


def _deflate(data: bytes) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush()


def raw_zip(members) -> bytes:
    """A ZIP written by hand, so a test decides exactly what each header claims.

    ``members``: (name bytes, deflated payload, crc32 of the data, uncompressed size, general-purpose flags).
    """
    out, central = bytearray(), bytearray()
    for name, payload, crc, usize, flags in members:
        off = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, 8, 0, 0x21, crc, len(payload), usize, len(name), 0)
        out += name + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, 8, 0, 0x21, crc, len(payload), usize,
                               len(name), 0, 0, 0, 0, 0, off) + name
    n = len(members)
    return bytes(out + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(out), 0))


def zip_of(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
       b"trailer<</Root 1 0 R>>\n%%EOF\n")
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 250 250\nnewpath 0 0 moveto 250 250 lineto stroke\nshowpage\n"


@dataclass
class Entry:
    name: str  # the name every surface must report it under
    data: bytes | None  # None: too large to hold (written as a sparse file)
    errors: tuple[str, ...] = ()  # substrings of the expected error; empty = must be classified
    real: bool = False  # a real crop from ../shared/data

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class Corpus:
    dir: Path
    args: list[Path]  # files and archives in batch order, for from_paths and the command line
    entries: list[Entry]  # one per expected item, in order
    uploads: list[tuple[str, bytes]]  # the same batch as page uploads
    spray: Path = None
    images: dict[str, bytes] = field(default_factory=dict)  # odd-but-valid images, by name
    base: np.ndarray = None  # the real crop the odd images are made of
    escape_names: list[str] = field(default_factory=list)  # archive names that must never become files

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, crops) -> Corpus:
    root = tmp_path_factory.mktemp("hostile")
    d = root / "corpus"
    d.mkdir()
    base = np.asarray(decode_image(crops["MON"][0]))  # 250 x 250 x 3, a real cell
    grey = np.asarray(Image.fromarray(base).convert("L"))

    odd: dict[str, bytes] = {}
    odd["grey16.png"] = _enc(Image.fromarray(grey.astype(np.uint16) * 16), "PNG")  # 12-bit data in 16 bits
    odd["grey16.tif"] = _enc(Image.fromarray(grey.astype(np.uint16) * 16), "TIFF")
    odd["cmyk.jpg"] = _enc(Image.fromarray(base).convert("CMYK"), "JPEG", quality=95)
    q = Image.fromarray(base).quantize(255)
    pal = (q.getpalette() + [0] * 768)[:768]
    pa = q.copy()
    pa.putpalette(pal)
    pa.paste(255, (0, 0, 50, 250))  # the left band: the transparent palette entry
    odd["palette_alpha.png"] = _enc(pa, "PNG", transparency=255)
    odd["grey.jpg"] = _enc(Image.fromarray(grey), "JPEG", quality=95)
    alpha = np.full_like(grey, 255)
    alpha[:, :50], alpha[:, 50:100] = 0, 128
    odd["la.png"] = _enc(Image.merge("LA", (Image.fromarray(grey), Image.fromarray(alpha))), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers turn it 90 degrees clockwise
    odd["exif6.jpg"] = _enc(Image.fromarray(base[:160]), "JPEG", quality=95, exif=exif)
    frames = [Image.fromarray(base), Image.fromarray(255 - base), Image.new("RGB", (250, 250), (0, 255, 0))]
    odd["anim.gif"] = _enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    # 4000 x 4000: decodes (under the pixel limit); no single-cell crop, and no nucleus either (colours inverted), so
    # it is refused by its size rather than searched as a smear field (bmcore.fields)
    odd["big4000.png"] = blocky_png(255 - base, 16)
    odd["big16_4000.png"] = blocky_png(grey.astype(np.uint16) * 257, 16)  # the same, 16-bit greyscale

    g = {c: crops[c][0] for c in ("BLA", "EOS", "LYT", "NGS", "PMO")}
    real = lambda p: Entry(p.name, p.read_bytes(), real=True)  # noqa: E731
    # ZIP members use real crops too; 'evil' names carry a valid image, so extracting one would leave a file
    good_bytes = g["PMO"].read_bytes()
    escape = ["../../evil.jpg", "/tmp/x.jpg", f"{root}/evil_abs.jpg", "..\\..\\evil_win.jpg", "C:/evil_drive.jpg"]
    inner = zip_of([("evil_inner.jpg", good_bytes)])
    batch = zip_of([(f"cells/{g['PMO'].name}", good_bytes)] + [(n, good_bytes) for n in escape]
                   + [("inner.zip", inner), ("cells/anim.gif", odd["anim.gif"]), ("readme.txt", b"a note\n"),
                      ("__MACOSX/cells/._x.jpg", b"\x00\x05\x16\x07")])
    bz = io.BytesIO()
    with zipfile.ZipFile(bz, "w", zipfile.ZIP_DEFLATED) as z:
        for name, mb in (("cells/zeros.jpg", 48), ("cells/zeros_big.jpg", 100)):  # ~50 and ~100 KB compressed
            with z.open(name, "w", force_zip64=True) as f:
                for _ in range(mb):
                    f.write(bytes(1 << 20))
    damaged_src = crops["EOS"][1].read_bytes()
    damaged = bytearray(_deflate(damaged_src))
    damaged[0] = 0xFF  # deflate block type 3 does not exist: zlib fails mid-read
    after = crops["LYT"][1]
    broken_data = raw_zip([(b"cells/damaged.jpg", bytes(damaged), zlib.crc32(damaged_src), len(damaged_src), 0),
                           (f"cells/{after.name}".encode(), _deflate(after.read_bytes()),
                            zlib.crc32(after.read_bytes()), after.stat().st_size, 0)])
    # the UTF-8 flag with a name that is not UTF-8: the archive's directory cannot be read at all
    broken_dir = raw_zip([(b"cells/\xe2x.jpg", _deflate(good_bytes), zlib.crc32(good_bytes), len(good_bytes), 0x800)])
    spray_member = _deflate(bytes(SPRAY_MEMBER_SIZE))
    spray = raw_zip([(f"z/{i:04d}.jpg".encode(), spray_member, zlib.crc32(bytes(SPRAY_MEMBER_SIZE)),
                      SPRAY_MEMBER_SIZE, 0) for i in range(SPRAY_MEMBERS)])

    nr = "not a recognised image format"
    files: list[Entry] = [
        real(g["BLA"]),
        Entry("empty.jpg", b"", ("empty (0 bytes)",)),
        Entry("grey16.png", odd["grey16.png"]),
        Entry("truncated.jpg", g["EOS"].read_bytes()[: g["EOS"].stat().st_size // 3], ("corrupt or truncated",)),
        Entry("grey16.tif", odd["grey16.tif"]),
        Entry("notes.jpg", b"Smear 14: patient notes, not an image.\n" * 4, (nr, "text")),
        Entry("cmyk.jpg", odd["cmyk.jpg"]),
        Entry("report.jpg", PDF, (nr, "PDF document")),
        Entry("palette_alpha.png", odd["palette_alpha.png"]),
        Entry("bomb.png", bomb_png(), ("pixel limit", "decompression bomb")),
        Entry("grey.jpg", odd["grey.jpg"]),
        Entry("drawing.jpg", EPS, (nr, "PostScript")),
        real(g["LYT"]),
        Entry("la.png", odd["la.png"]),
        Entry("exif6.jpg", odd["exif6.jpg"]),
        Entry("tiny8.png", _enc(Image.fromarray(base[:8, :8]), "PNG"), ("too small (8x8 px)",)),
        Entry("big4000.png", odd["big4000.png"], ("4000x4000 px", "too large for a single-cell crop")),
        Entry("huge6000.png", flat_png(6000, 6000), ("6000x6000", "pixel limit")),
        Entry("toolarge.jpg", None, (SIZE_LIMIT_MSG,)),
        Entry("archive.jpg", inner, (nr, "ZIP archive")),
        real(g["NGS"]),
    ]
    zips = {"batch.zip": batch, "bomb.zip": bz.getvalue(), "broken_dir.zip": broken_dir,
            "broken_data.zip": broken_data}
    members = [Entry(f"batch.zip/cells/{g['PMO'].name}", good_bytes, real=True)]
    members += [Entry(f"batch.zip/{n}", None, ("unsafe path",)) for n in escape]
    members += [Entry("batch.zip/inner.zip", None, ("nested archive",)),
                Entry("batch.zip/cells/anim.gif", odd["anim.gif"]),
                Entry("batch.zip/readme.txt", None, ("not an image file type (.txt)",)),
                Entry("bomb.zip/cells/zeros.jpg", None, ("compression ratio too high", "ZIP bomb")),
                Entry("bomb.zip/cells/zeros_big.jpg", None, ("105 MB uncompressed", SIZE_LIMIT_MSG)),
                Entry("broken_dir.zip", None, ("not a valid ZIP archive",)),
                Entry("broken_data.zip/cells/damaged.jpg", None, ("cannot read from archive",)),
                Entry(f"broken_data.zip/cells/{after.name}", after.read_bytes(), real=True)]

    args = []
    for e in files:
        p = d / e.name
        if e.data is None:  # a sparse file just over the per-file limit: big on paper, nothing on disk
            with open(p, "wb") as f:
                f.write(b"\xff\xd8\xff\xe0")
                f.truncate(DEFAULT_MAX_BYTES + 1)
        else:
            p.write_bytes(e.data)
        args.append(p)
    for name, data in zips.items():
        (d / name).write_bytes(data)
        args.append(d / name)
    (root / "spray.zip").write_bytes(spray)
    uploads = [(e.name, e.data if e.data is not None else b"\xff\xd8\xff\xe0" + bytes(DEFAULT_MAX_BYTES))
               for e in files] + list(zips.items())
    return Corpus(dir=d, args=args, entries=files + members, uploads=uploads, spray=root / "spray.zip", images=odd,
                  base=base, escape_names=escape)


def _check_error(name: str, error: str, expected: tuple[str, ...]):
    assert error, f"{name} was accepted; expected an error containing {expected}"
    for sub in expected:
        assert sub in error, f"{name}: {error!r} does not say {sub!r}"


def _assert_nothing_escaped(corpus: Corpus, bases: list[Path], scan: list[Path]):
    """No file an archive names exists: not where a naive extraction from any base would put it, not anywhere
    under the scanned trees, not next to them."""
    leaked = []
    for root in scan:
        leaked += [p for p in root.rglob("*") if p.name.startswith("evil") or p.name == "x.jpg"]
        for up in (root.parent, root.parent.parent):
            leaked += [p for p in up.iterdir() if p.name.startswith("evil")]
    for base in bases:
        for n in corpus.escape_names:
            rel = n.replace("\\", "/").lstrip("/").replace("C:/", "")
            for target in (base / rel, Path("/") / rel):
                if n != "/tmp/x.jpg" and os.path.lexists(os.path.normpath(target)):
                    leaked.append(target)
    assert not leaked, f"files named by the archive were written: {leaked}"


# -- the library -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_predictor():
    from bmcore.cli import default_bundle
    from bmcore.predictor import Predictor

    try:
        path = default_bundle()
    except SystemExit as exc:
        pytest.skip(str(exc))
    # test-time augmentation off: it only multiplies the forward passes (4x on a CPU); what reaches the model,
    # and what is refused before it, is the same
    return Predictor(path, tta=False)


def test_library_reports_every_bad_file_by_name_and_classifies_the_rest(corpus, default_predictor):
    items = from_paths(corpus.args)
    assert [it.name for it in items] == corpus.names  # nothing lost, nothing added, order kept
    results = default_predictor.predict_items(items)
    assert [r.name for r in results] == corpus.names
    for e, r in zip(corpus.entries, results):
        if e.ok:
            assert r.ok, f"{e.name} should be classified: {r.error}"
            assert r.code in default_predictor.classes and sum(r.probabilities.values()) == pytest.approx(1, abs=1e-4)
        else:
            assert not r.ok
            _check_error(e.name, r.error, e.errors)
    # a good crop gets the same answer in this batch as on its own
    for e, r in zip(corpus.entries, results):
        if e.real:
            alone = default_predictor.predict([e.data], [e.name])[0]
            assert alone.code == r.code, e.name
            assert np.allclose([alone.probabilities[c] for c in alone.probabilities],
                               [r.probabilities[c] for c in alone.probabilities], atol=1e-4), e.name


def test_uploads_collect_like_paths_and_the_batch_limit_refuses_the_excess_by_name(corpus):
    by_path = from_paths(corpus.args)
    by_upload = [it for name, data in corpus.uploads for it in from_upload(name, data)]
    assert [(it.name, it.error) for it in by_upload] == [(it.name, it.error) for it in by_path]
    n_ok = sum(it.ok for it in by_path)
    capped = from_paths(corpus.args, max_files=n_ok - 2)
    over = [it for it in capped if "images per batch" in it.error]
    assert [it.name for it in over] == [it.name for it in by_path if it.ok][-2:]
    assert all(f"over the limit of {n_ok - 2} images" in it.error and it.source is None for it in over)
    assert [it.name for it in capped] == corpus.names
    capped_up = enforce_limit(by_upload, n_ok - 2)
    assert [it.error for it in capped_up] == [it.error for it in capped]


def test_a_folder_loses_no_file_silently(tmp_path, crop_path):
    (tmp_path / "sub" / "__MACOSX").mkdir(parents=True)
    (tmp_path / "cell.jpg").write_bytes(crop_path.read_bytes())
    (tmp_path / "sub" / "cell.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (tmp_path / "sub" / "nested.zip").write_bytes(zip_of([("a.jpg", crop_path.read_bytes())]))
    for litter in (".DS_Store", "Thumbs.db", "sub/._cell.jpg", "sub/__MACOSX/x.jpg"):
        (tmp_path / litter).write_bytes(b"\x00")
    got = [(it.name, it.error) for it in from_paths([tmp_path])]  # reported by name, or known litter
    assert got == [("cell.jpg", ""), ("sub/cell.heic", "not an image file type (.heic)"),
                   ("sub/nested.zip", "archive inside a folder; give it on its own")]


def test_zip_bombs_are_refused_member_by_member_without_holding_them(corpus):
    items = from_zip(corpus.dir.joinpath("bomb.zip").read_bytes(), "bomb.zip")
    assert [(it.name, it.source) for it in items] == [("bomb.zip/cells/zeros.jpg", None),
                                                      ("bomb.zip/cells/zeros_big.jpg", None)]
    spray = from_zip(corpus.spray, "spray.zip")  # by path, as the command line reads it
    assert [it.name for it in spray] == [f"spray.zip/z/{i:04d}.jpg" for i in range(SPRAY_MEMBERS)]
    held = [it for it in spray if it.ok]
    assert sum(len(it.source) for it in held) <= ARCHIVE_EXPANSION_FLOOR  # not 700 MB
    assert len(held) == ARCHIVE_EXPANSION_FLOOR // SPRAY_MEMBER_SIZE
    assert all("ZIP bomb" in it.error and it.source is None for it in spray[len(held):])
    same = from_zip(corpus.spray.read_bytes(), "spray.zip")  # as bytes, as the page reads it
    assert [(it.name, it.error) for it in same] == [(it.name, it.error) for it in spray]


def test_odd_but_valid_images_decode_to_the_right_rgb(corpus):
    base = corpus.base.astype(int)
    grey = np.asarray(Image.fromarray(corpus.base).convert("L")).astype(int)
    out = {n: np.asarray(decode_image(b)) for n, b in corpus.images.items()}
    for n, a in out.items():
        assert a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8, n
    big, big16 = out.pop("big4000.png"), out.pop("big16_4000.png")
    out = {n: a.astype(int) for n, a in out.items()}
    for n in ("grey16.png", "grey16.tif"):  # 16-bit: the image's maximum becomes 255, not clipped, not darkened
        a = out[n]
        assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
        assert a.max() == 255 and np.abs(a[..., 0] - grey * 255 / grey.max()).max() <= 1
    assert np.abs(out["cmyk.jpg"] - base).mean() < 6  # CMYK back to the crop's colours, not inverted
    pa = out["palette_alpha.png"]
    assert (pa[:, :50] == 255).all()  # transparent -> white (the slide background)
    q = np.asarray(Image.open(io.BytesIO(corpus.images["palette_alpha.png"])).convert("RGB")).astype(int)
    assert (pa[:, 50:] == q[:, 50:]).all()
    g = out["grey.jpg"]
    assert (g[..., 0] == g[..., 2]).all() and np.abs(g[..., 0] - grey).mean() < 3
    la = out["la.png"][..., 0]
    assert (la[:, :50] == 255).all() and (la[:, 100:] == grey[:, 100:]).all()
    half = (grey[:, 50:100] * 128 + 255 * 127) / 255  # alpha 128 over white
    assert np.abs(la[:, 50:100] - half).max() <= 1
    ex = out["exif6.jpg"]
    assert ex.shape == (250, 160, 3)  # stored 250 wide x 160 high, shown turned
    cw, ccw = np.rot90(base[:160], k=-1), np.rot90(base[:160], k=1)
    assert np.abs(ex - cw).mean() < 6 < np.abs(ex - ccw).mean()
    gif = out["anim.gif"]  # the first frame, not the inverted second or the green third
    assert np.abs(gif - base).mean() < 12 and np.abs(gif - (255 - base)).mean() > 40
    assert big.shape == (4000, 4000, 3) and (big[::16, ::16] == 255 - base).all() and (big[15::16, 15::16] == 255 - base).all()
    assert big16.shape == (4000, 4000, 3) and big16.max() == 255
    assert np.abs(big16[::16, ::16, 0].astype(int) - grey * 255 / grey.max()).max() <= 1


def test_decode_image_raises_only_its_own_error():
    tiny = _enc(Image.new("RGB", (MIN_SIDE - 1, 200)), "PNG")
    with pytest.raises(ImageDecodeError, match=rf"too small \({MIN_SIDE - 1}x200 px\)"):
        decode_image(tiny)
    assert decode_image(_enc(Image.new("RGB", (MIN_SIDE, 200)), "PNG")).size == (MIN_SIDE, 200)
    with pytest.raises(ImageDecodeError, match="cannot read file"):  # a folder given as a file
        decode_image(Path(tempfile.gettempdir()))
    ppm = b"P6\n64 64\n255\n" + bytes(64 * 64 * 3)  # a valid image, but not a format the app takes
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        decode_image(ppm)


def test_memory_stays_bounded_on_bombs_and_big_images(corpus):
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak-memory mark per case")
    code = r"""
import ctypes, gc, json, sys, types
from pathlib import Path
sys.modules["torch"] = types.ModuleType("torch")  # decoding never touches torch; importing it costs seconds
from bmcore.inputs import from_zip
from bmcore.preprocess import ImageDecodeError, decode_image

def mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

try:
    trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    trim = lambda _: None
out = {}
for path in sys.argv[1:]:
    p = Path(path)
    data = p.read_bytes()
    gc.collect()
    trim(0)  # hand memory freed by the previous case back, so it cannot hide this case's growth
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak resident memory) to the current size
    start = mb("VmRSS:")
    if p.suffix == ".zip":
        items = from_zip(data, p.name)
        res = [sum(it.ok for it in items), len(items), sum(len(it.source) for it in items if it.ok)]
        del items
    else:
        try:
            img = decode_image(data)
            res = list(img.size)
            del img
        except ImageDecodeError as exc:
            res = str(exc)
    out[p.name] = {"peak_growth_mb": round(mb("VmHWM:") - start, 1), "result": res}
print(json.dumps(out))
"""
    big16 = corpus.dir.parent / "big16_4000.png"
    big16.write_bytes(corpus.images["big16_4000.png"])
    # the refusals first, the big decodes last: nothing an earlier case freed is there to be reused unseen
    paths = [corpus.dir / n for n in ("bomb.png", "huge6000.png", "bomb.zip")] + [corpus.spray]
    paths += [corpus.dir / "big4000.png", big16]
    r = subprocess.run([sys.executable, "-c", code, *map(str, paths)], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    print("peak memory growth per case (MB):", json.dumps(m))
    # refused from the headers: the 40000^2 bomb would need 4.8 GB, the 6000^2 image 108 MB, the members 48 + 100 MB
    assert "pixel limit" in m["bomb.png"]["result"] and m["bomb.png"]["peak_growth_mb"] < 30
    assert "6000x6000" in m["huge6000.png"]["result"] and m["huge6000.png"]["peak_growth_mb"] < 30
    assert m["bomb.zip"]["result"] == [0, 2, 0] and m["bomb.zip"]["peak_growth_mb"] < 30
    # decoded, within a generous bound
    for n in ("big4000.png", "big16_4000.png"):
        assert m[n]["result"] == [4000, 4000] and m[n]["peak_growth_mb"] < 500, n
    # 700 x 1 MB members unpack to 700 MB; only the archive's budget (64 MB) is held
    assert m["spray.zip"]["result"][1] == SPRAY_MEMBERS and m["spray.zip"]["peak_growth_mb"] < 200


# -- the command line ------------------------------------------------------------------------------

def test_cli_lists_bad_files_by_name_classifies_the_rest_and_writes_nothing_else(corpus, tiny_bundle, tmp_path):
    from bmcore.predictor import Predictor

    work, tmpdir, out = tmp_path / "work" / "a" / "b", tmp_path / "tmpdir", tmp_path / "out"
    for p in (work, tmpdir):
        p.mkdir(parents=True)
    many = tmp_path / "many"  # more files than a batch may hold: the excess is refused by name
    many.mkdir()
    n_before = sum(it.ok for it in from_paths(corpus.args))
    n_many = MAX_FILES - n_before + 2
    for i in range(n_many):
        (many / f"blank_{i:05d}.jpg").touch()
    x_before = os.path.lexists("/tmp/x.jpg") and os.stat("/tmp/x.jpg").st_mtime_ns
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "bmcore", "classify", *map(str, corpus.args), str(many),
                        "--bundle", str(tiny_bundle.path), "--out", str(out / "cells.csv"), "--heatmaps",
                        str(out / "heat")], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO((out / "cells.csv").read_text())))
    blanks = [f"blank_{i:05d}.jpg" for i in range(n_many)]
    assert [x["file"] for x in rows] == corpus.names + blanks
    skipped = {line for line in r.stderr.splitlines() if line.startswith("skipped ")}
    alone = Predictor(tiny_bundle)
    for e, x in zip(corpus.entries, rows):
        if e.ok:
            assert x["status"] == "ok", f"{e.name}: {x['error']}"
            solo = alone.predict([e.data], [e.name])[0]
            assert x["predicted"] == solo.code, e.name
            assert all(abs(float(x[f"p_{c}"]) - solo.probabilities[c]) < 1e-3 for c in alone.classes), e.name
        else:
            assert x["status"] == "unreadable"
            _check_error(e.name, x["error"], e.errors)
            assert f"skipped {e.name}: {x['error']}" in skipped  # named on the console too
    tail = rows[len(corpus.entries):]
    assert all("empty" in x["error"] for x in tail[:-2])
    assert [x["file"] for x in tail[-2:]] == blanks[-2:]
    assert all(f"over the limit of {MAX_FILES} images per batch" in x["error"] for x in tail[-2:])
    n_ok = sum(e.ok for e in corpus.entries)
    heat = sorted((out / "heat").iterdir())
    assert len(heat) == n_ok and all(p.suffix == ".png" for p in heat)
    assert sorted(p.name for p in out.iterdir()) == ["cells.csv", "heat"]
    assert not list(work.iterdir()) and not list(tmpdir.rglob("*.jpg"))
    _assert_nothing_escaped(corpus, bases=[work, tmpdir, out, out / "heat", REPO, corpus.dir],
                            scan=[tmp_path, corpus.dir.parent])
    assert (os.path.lexists("/tmp/x.jpg") and os.stat("/tmp/x.jpg").st_mtime_ns) == x_before


# -- the Classify page -----------------------------------------------------------------------------

def test_classify_page_lists_unreadable_files_and_classifies_the_good_ones(corpus, crops, tmp_path, monkeypatch):
    import bmcore.inputs
    from streamlit.testing.v1 import AppTest

    from bmcore.cases import CaseStore
    from bmcore.predictor import Predictor

    work, tmpdir = tmp_path / "work" / "a" / "b", tmp_path / "tmpdir"
    for p in (work, tmpdir):
        p.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # recomputed from TMPDIR
    db = f"sqlite:///{tmp_path / 'cases.db'}"
    monkeypatch.setenv("BM_DATABASE_URL", db)
    monkeypatch.setenv("BM_MODELS_DIR", str(tmp_path / "models"))
    bundle = make_bundle(tmp_path / "models" / "eight", DEV_CLASSES)
    last = crops["ART"][0]  # one crop more than the (lowered) batch limit allows: refused by name
    uploads = corpus.uploads + [(last.name, last.read_bytes())]
    n_ok = sum(it.ok for name, data in uploads for it in from_upload(name, data))
    monkeypatch.setattr(bmcore.inputs, "MAX_FILES", n_ok - 1)
    expected = corpus.entries + [Entry(last.name, None, (f"over the limit of {n_ok - 1} images",))]
    x_before = os.path.lexists("/tmp/x.jpg") and os.stat("/tmp/x.jpg").st_mtime_ns

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.session_state["actor"] = actor(CaseStore(db), "tech", "technologist")  # signed in
    at.session_state["bundle"] = str(bundle.path)
    at.session_state[f"threshold::{bundle.sha256[:16]}"] = 0.0
    at.run()
    assert not at.exception, at.exception
    at.switch_page("views/classify.py").run()
    at.text_input(key="new_case_code").set_value("HOSTILE-1")
    at.file_uploader(key=upload_key(at.session_state)).set_value([(n, data, "application/octet-stream") for n, data in uploads])
    at.run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    wait_classified(at)

    bad_expected = [e for e in expected if not e.ok]
    assert next(m.value for m in at.metric if m.label == "Unreadable files") == str(len(bad_expected))
    tables = [df.value for df in at.dataframe if list(df.value.columns) == ["file", "error"]]
    assert len(tables) == 1, "the page lists the unreadable files in one table"
    assert list(tables[0].file) == [e.name for e in bad_expected]
    for e, err in zip(bad_expected, tables[0].error):
        _check_error(e.name, err, e.errors)

    case = CaseStore(db).get_case(at.session_state["case_id"])
    assert [c.name for c in case.cells] == [e.name for e in expected]
    good = [e for e in expected if e.ok]
    cells = [c for c in case.cells if c.ok]
    assert [c.name for c in cells] == [e.name for e in good]
    solo = Predictor(bundle)
    for e, c in zip(good, cells):
        assert c.predicted == solo.predict([e.data], [e.name])[0].code, e.name
    assert not list(work.iterdir()) and not list(tmpdir.rglob("*.jpg"))
    _assert_nothing_escaped(corpus, bases=[work, tmpdir, REPO, corpus.dir], scan=[tmp_path, corpus.dir.parent])
    assert (os.path.lexists("/tmp/x.jpg") and os.stat("/tmp/x.jpg").st_mtime_ns) == x_before
