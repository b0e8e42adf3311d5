"""Collect the crops of one batch from files, folders and ZIP archives, safely.

Nothing is extracted to disk: archive members are read into memory after their declared
size, their compression ratio (ZIP bombs) and the archive's total expansion (many small
bombs) are checked, names with ``..`` or absolute paths are never used as paths (they are
only reported), nested archives are reported, not opened, and an archive that cannot be
read at all is one refused item. Every refused item becomes an ``InputItem`` with an
``error`` so a caller can list it by name while the rest of the batch goes on: apart from
known operating-system litter (``__MACOSX/``, ``._*``, ``.DS_Store``, ``Thumbs.db``,
``desktop.ini``), no file of a folder or archive is dropped without a message.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .preprocess import DEFAULT_MAX_BYTES, IMAGE_SUFFIXES

MAX_FILES = 5000  # per case / batch
MAX_ARCHIVE_TOTAL = 2 * 1024 ** 3  # uncompressed bytes in one archive
MAX_RATIO = 200  # uncompressed/compressed; JPEGs barely compress, so a huge ratio means a bomb
# the archive as a whole may expand to at most this many times its own size (or the floor, for small archives
# of small crops): images barely compress, so many members just under the per-member check are a bomb too
MAX_ARCHIVE_EXPANSION = 20
ARCHIVE_EXPANSION_FLOOR = 64 * 1024 ** 2
ARCHIVE_SUFFIXES = (".zip",)
_LITTER = {".ds_store", "thumbs.db", "desktop.ini"}


@dataclass
class InputItem:
    name: str
    source: bytes | Path | None = None
    error: str = ""
    # a cell found in a smear-field image (bmcore.fields.expand_fields): {"field", "box", "um_per_px", "scale_source"}
    origin: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.error

    def data(self) -> bytes:
        """The file's bytes, whether it came as an upload (bytes) or a path (read now). ``bytes(path)`` would be the
        path's own name, not the file."""
        return self.source.read_bytes() if isinstance(self.source, Path) else bytes(self.source)


def _safe_chars(part: str) -> str:
    """Control, bidirectional-override and other non-printing characters (U+202E makes "gpj.exe" read "exe.jpg")
    and the characters file systems refuse, each as "_"."""
    return "".join(ch if ch.isprintable() and ch not in '<>:"|?*' else "_" for ch in part)


def safe_display_name(name: str) -> str:
    """A name fit for a table and a file name: no directories, no control or bidi characters."""
    base = PurePosixPath(name.replace("\\", "/")).name or "unnamed"
    return _safe_chars(base)[:200]


def safe_member_name(name: str) -> str:
    """A ZIP member's path as shown and stored ("folder/crop.jpg"): its control, bidirectional-override and other
    non-printing characters each as "_", like an uploaded name's (nothing is written to disk under it)."""
    return "".join(ch if ch.isprintable() else "_" for ch in name)[:300] or "unnamed"


def _is_litter(name: str) -> bool:
    """Operating-system side files (macOS resource forks and folder data, Windows thumbnails): not crops."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    base = parts[-1] if parts else ""
    return "__MACOSX" in parts or base.startswith("._") or base.lower() in _LITTER


def _not_image(suffix: str) -> str:
    return f"not an image file type ({suffix or 'no extension'})"


def from_zip(data: bytes | Path, archive_name: str = "archive.zip", *, max_files: int = MAX_FILES,
             max_bytes: int = DEFAULT_MAX_BYTES) -> list[InputItem]:
    """The members of a ZIP archive (its bytes, or a path: then it is read member by member, never whole)."""
    try:
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        zf = zipfile.ZipFile(data if isinstance(data, Path) else io.BytesIO(data))
    except Exception as exc:  # BadZipFile, but a damaged directory also raises ValueError, NotImplementedError...
        return [InputItem(archive_name, error=f"not a valid ZIP archive ({exc})")]
    items: list[InputItem] = []
    total = accepted = 0
    budget = min(MAX_ARCHIVE_TOTAL, max(MAX_ARCHIVE_EXPANSION * size, ARCHIVE_EXPANSION_FLOOR))
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        for info in infos:
            name = info.filename
            shown = f"{archive_name}/{safe_member_name(name)}"
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                items.append(InputItem(shown, error="unsafe path in archive (absolute or '..'); skipped"))
                continue
            if _is_litter(name):
                continue
            suffix = PurePosixPath(name).suffix.lower()
            if suffix in ARCHIVE_SUFFIXES:
                items.append(InputItem(shown, error="nested archive; unpack it and upload its images"))
                continue
            if suffix not in IMAGE_SUFFIXES:
                items.append(InputItem(shown, error=_not_image(suffix)))
                continue
            if accepted >= max_files:
                items.append(InputItem(shown, error=f"over the limit of {max_files} images per batch"))
                continue
            if info.file_size > max_bytes:
                items.append(InputItem(shown, error=f"{info.file_size / 1e6:.0f} MB uncompressed, over the "
                                                    f"{max_bytes / 1e6:.0f} MB limit"))
                continue
            if info.compress_size and info.file_size / info.compress_size > MAX_RATIO and info.file_size > 1e6:
                items.append(InputItem(shown, error="compression ratio too high (ZIP bomb?); skipped"))
                continue
            if total + info.file_size > budget:  # every later member is still listed, by name
                why = ("archive too large in total" if budget == MAX_ARCHIVE_TOTAL else
                       f"archive unpacks to over {MAX_ARCHIVE_EXPANSION}x its size (ZIP bomb?)")
                items.append(InputItem(shown, error=f"{why}: over {budget / 1e6:.0f} MB uncompressed; "
                                                    "this and later members skipped"))
                total = budget + 1
                continue
            total += info.file_size
            try:
                with zf.open(info) as fh:
                    blob = fh.read(max_bytes + 1)  # zipfile stops at the declared size, so this is bounded
                if len(blob) > max_bytes:
                    items.append(InputItem(shown, error="larger than declared; skipped"))
                    continue
                items.append(InputItem(shown, blob))
                accepted += 1
            except Exception as exc:  # bad CRC, corrupt deflate data (zlib.error), encrypted, unknown method
                items.append(InputItem(shown, error=f"cannot read from archive ({exc})"))
    return items


def from_upload(name: str, data: bytes, **limits) -> list[InputItem]:
    """One uploaded file: an image, or a ZIP of images."""
    if PurePosixPath(name).suffix.lower() in ARCHIVE_SUFFIXES:
        return from_zip(data, safe_display_name(name), **limits)
    return [InputItem(safe_display_name(name), data)]


def from_paths(paths: list[str | Path], *, max_files: int = MAX_FILES) -> list[InputItem]:
    """Files, folders (searched recursively for images) and ZIP archives given on a command line."""
    items: list[InputItem] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                rel = f.relative_to(p).as_posix()
                if _is_litter(rel):
                    continue
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    items.append(InputItem(rel, f))
                elif f.suffix.lower() in ARCHIVE_SUFFIXES:
                    items.append(InputItem(rel, error="archive inside a folder; give it on its own"))
                else:
                    items.append(InputItem(rel, error=_not_image(f.suffix.lower())))
        elif p.is_file() and p.suffix.lower() in ARCHIVE_SUFFIXES:
            items.extend(from_zip(p, p.name, max_files=max_files))
        elif p.is_file():
            items.append(InputItem(p.name, p))
        else:
            items.append(InputItem(str(p), error="no such file or folder"))
    return enforce_limit(items, max_files)


def enforce_limit(items: list[InputItem], max_files: int = MAX_FILES) -> list[InputItem]:
    """Refuse, by name, every usable image past the first ``max_files`` of a batch."""
    ok = 0
    for it in items:
        if it.ok:
            ok += 1
            if ok > max_files:
                it.source, it.error = None, f"over the limit of {max_files} images per batch"
    return items
