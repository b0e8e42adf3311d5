"""Collect the crops of one batch from files, folders and ZIP archives, safely.

Nothing is extracted to disk: archive members are read into memory after their declared
size, the archive's total and its compression ratio are checked (ZIP bombs), names with
``..`` or absolute paths are never used as paths (they are only reported), nested archives
are reported, not opened. Every refused item becomes an ``InputItem`` with an ``error`` so a
caller can list it by name while the rest of the batch goes on.
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
ARCHIVE_SUFFIXES = (".zip",)


@dataclass
class InputItem:
    name: str
    source: bytes | Path | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def safe_display_name(name: str) -> str:
    """A name fit for a table and a file name: no directories, no control characters."""
    base = PurePosixPath(name.replace("\\", "/")).name or "unnamed"
    return "".join(ch if ch.isprintable() and ch not in '<>:"|?*' else "_" for ch in base)[:200]


def from_zip(data: bytes, archive_name: str = "archive.zip", *, max_files: int = MAX_FILES,
             max_bytes: int = DEFAULT_MAX_BYTES) -> list[InputItem]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return [InputItem(archive_name, error="not a valid ZIP archive")]
    items: list[InputItem] = []
    total = 0
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        for info in infos:
            name = info.filename
            shown = f"{archive_name}/{name}"
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                items.append(InputItem(shown, error="unsafe path in archive (absolute or '..'); skipped"))
                continue
            if parts and (parts[0] == "__MACOSX" or PurePosixPath(name).name.startswith("._")):
                continue  # macOS resource forks, not images
            suffix = PurePosixPath(name).suffix.lower()
            if suffix in ARCHIVE_SUFFIXES:
                items.append(InputItem(shown, error="nested archive; unpack it and upload its images"))
                continue
            if suffix not in IMAGE_SUFFIXES:
                items.append(InputItem(shown, error=f"not an image file type ({suffix or 'no extension'})"))
                continue
            if len([i for i in items if i.ok]) >= max_files:
                items.append(InputItem(shown, error=f"over the limit of {max_files} images per batch"))
                continue
            if info.file_size > max_bytes:
                items.append(InputItem(shown, error=f"{info.file_size / 1e6:.0f} MB uncompressed, over the limit"))
                continue
            if info.compress_size and info.file_size / info.compress_size > MAX_RATIO and info.file_size > 1e6:
                items.append(InputItem(shown, error="compression ratio too high (ZIP bomb?); skipped"))
                continue
            total += info.file_size
            if total > MAX_ARCHIVE_TOTAL:
                items.append(InputItem(shown, error="archive too large in total; the rest was skipped"))
                break
            try:
                with zf.open(info) as fh:
                    blob = fh.read(max_bytes + 1)
                if len(blob) > max_bytes:
                    items.append(InputItem(shown, error="larger than declared; skipped"))
                    continue
                items.append(InputItem(shown, blob))
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
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
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    items.append(InputItem(f.relative_to(p).as_posix(), f))
                elif f.suffix.lower() in ARCHIVE_SUFFIXES:
                    items.append(InputItem(f.relative_to(p).as_posix(), error="archive inside a folder; give it on its own"))
        elif p.is_file() and p.suffix.lower() in ARCHIVE_SUFFIXES:
            items.extend(from_zip(p.read_bytes(), p.name, max_files=max_files))
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
