"""Index a dataset root as it comes, split it once, and serve it to training and evaluation.

Layouts accepted: one folder per class (``BLA/BLA_00001.jpg``) and the full TCIA dataset's
nested folders (``BLA/0001-1000/BLA_00001.jpg``). The class is the top-level folder name
(falling back to the ``<CODE>_<number>`` file-name prefix). Nothing is ever written into
the data root.

    python -m train.data index --root ../shared/data/bm-dev --task bm14 --out train/splits/bm-dev.csv
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from tqdm import tqdm

from bmcore.preprocess import IMAGE_SUFFIXES, DataConfig, ImageDecodeError, decode_image, resize_rgb, \
    to_uint8_tensor
from bmcore.tasks import CELL_NAMES, get_task

log = logging.getLogger(__name__)
STEM_RE = re.compile(r"^([A-Z]{3})_\d+")


@dataclass
class IndexReport:
    counts: dict[str, int]
    missing_task_classes: list[str]
    skipped_known_bad: list[str] = field(default_factory=list)
    duplicates_dropped: list[tuple[str, str]] = field(default_factory=list)  # (dropped, kept)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    outside_task: dict[str, int] = field(default_factory=dict)
    unlabelled: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return self.__dict__.copy()

    def summary(self) -> str:
        lines = ["class  crops"] + [f"{c:5s} {n:6d}" for c, n in self.counts.items()]
        lines.append(f"total {sum(self.counts.values()):6d}")
        if self.missing_task_classes:
            lines.append("task classes with no crops: " + ", ".join(self.missing_task_classes))
        if self.outside_task:
            lines.append("ignored (not in task): " + ", ".join(f"{k} {v}" for k, v in self.outside_task.items()))
        lines.append(f"skipped known-bad: {len(self.skipped_known_bad)}; duplicates dropped: "
                     f"{len(self.duplicates_dropped)}; unreadable: {len(self.unreadable)}; "
                     f"unlabelled: {len(self.unlabelled)}")
        for p, why in self.unreadable[:20]:
            lines.append(f"  unreadable {p}: {why}")
        return "\n".join(lines)


def read_known_bad(path: str | Path | None) -> set[str]:
    if not path:
        return set()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"known-bad list not found: {p}")
    return {ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


def label_of(rel: Path) -> str | None:
    top = rel.parts[0] if len(rel.parts) > 1 else ""
    if top in CELL_NAMES:
        return top
    m = STEM_RE.match(rel.stem)
    return m.group(1) if m and m.group(1) in CELL_NAMES else None


def index_dataset(root: str | Path, task: str = "bm14", known_bad: set[str] | None = None,
                  verify: bool = True, progress: bool = True) -> tuple[pd.DataFrame, IndexReport]:
    """One row per usable crop: ``path`` (relative to root), ``label``, ``sha256``; plus a report."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root}")
    t = get_task(task)
    known_bad = known_bad or set()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    rows, seen = [], {}
    rep = IndexReport(counts={}, missing_task_classes=[])
    for p in tqdm(files, desc="indexing", disable=not progress, unit="img"):
        rel = p.relative_to(root)
        if p.stem in known_bad:
            rep.skipped_known_bad.append(rel.as_posix())
            continue
        label = label_of(rel)
        if label is None:
            rep.unlabelled.append(rel.as_posix())
            continue
        if label not in t.classes:
            rep.outside_task[label] = rep.outside_task.get(label, 0) + 1
            continue
        data = p.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            rep.duplicates_dropped.append((rel.as_posix(), seen[digest]))
            continue
        if verify:
            try:
                decode_image(data)
            except ImageDecodeError as exc:
                rep.unreadable.append((rel.as_posix(), str(exc)))
                continue
        seen[digest] = rel.as_posix()
        rows.append({"path": rel.as_posix(), "label": label, "sha256": digest})
    df = pd.DataFrame(rows, columns=["path", "label", "sha256"])
    rep.counts = {c: int((df.label == c).sum()) for c in t.classes if (df.label == c).any()}
    rep.missing_task_classes = [c for c in t.classes if c not in rep.counts]
    return df, rep


def make_splits(df: pd.DataFrame, val: float = 0.15, test: float = 0.15, seed: int = 42) -> pd.DataFrame:
    """Seeded, stratified, image-level train/val/test split (file names carry no patient id)."""
    idx = np.arange(len(df))
    rest, test_idx = train_test_split(idx, test_size=test, stratify=df.label.values, random_state=seed)
    train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), stratify=df.label.values[rest],
                                          random_state=seed)
    out = df.copy()
    out["split"] = ""
    out.iloc[train_idx, out.columns.get_loc("split")] = "train"
    out.iloc[val_idx, out.columns.get_loc("split")] = "val"
    out.iloc[test_idx, out.columns.get_loc("split")] = "test"
    return out.sort_values(["split", "label", "path"]).reset_index(drop=True)


def load_splits(csv: str | Path) -> pd.DataFrame:
    df = pd.read_csv(csv)
    missing = {"path", "label", "split"} - set(df.columns)
    if missing:
        raise ValueError(f"{csv}: split file lacks columns {sorted(missing)}")
    return df


def task_classes_present(df: pd.DataFrame, task: str) -> list[str]:
    """The task's classes that have crops in ``df``, in the task's order: what a model will cover."""
    present = set(df.label)
    return [c for c in get_task(task).classes if c in present]


class CropDataset(Dataset):
    """Crops of one split, decoded and resized once through ``bmcore.preprocess`` and cached as uint8.

    Items are ``(uint8 CHW tensor, class index)``: exactly the app's path (decode -> resize_rgb);
    training augments whole batches on the training device (``BatchAugment``), evaluation
    normalises them as the app does.
    """

    def __init__(self, root: str | Path, df: pd.DataFrame, classes: list[str], cfg: DataConfig, cache: bool = True):
        self.root = Path(root)
        self.paths = df.path.tolist()
        self.classes = classes
        index = {c: i for i, c in enumerate(classes)}
        self.targets = [index[c] for c in df.label]
        self.cfg = cfg
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def uint8(self, i: int) -> torch.Tensor:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        x = to_uint8_tensor(resize_rgb(decode_image(self.root / self.paths[i]), self.cfg))
        if self._cache is not None:
            self._cache[i] = x
        return x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.uint8(i), self.targets[i]

    def preload(self, workers: int = 0) -> torch.Tensor:
        """Every crop as one uint8 (N, 3, S, S) tensor, decoded in a thread pool (PIL releases the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers or min(16, os.cpu_count() or 1)) as ex:
            return torch.stack(list(ex.map(self.uint8, range(len(self)))))


class BatchAugment:
    """Train-time augmentation of a uint8 batch (B, 3, S, S) on its own device -> float in [0, 1].

    ``light``: flips and 90-degree turns (a cell has no up or left); ``strong`` adds a zoom
    (random resized crop: 70-100 % of the area, aspect 0.85-1.18) and colour jitter (brightness,
    contrast +-20 %, saturation +-15 %, hue +-0.02 turn, as stains and scanners vary). Flips,
    turns and zoom are one affine resampling per crop, so a batch costs one ``grid_sample``.
    """

    def __init__(self, level: str, generator: torch.Generator | None = None):
        if level not in ("none", "light", "strong"):
            raise ValueError(f"augment must be none, light or strong, not {level!r}")
        self.level, self.g = level, generator

    def _u(self, n: int, lo: float, hi: float, device) -> torch.Tensor:
        return (torch.rand(n, generator=self.g) * (hi - lo) + lo).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        x = x.float() / 255.0
        if self.level == "none":
            return x
        n, dev = x.shape[0], x.device
        k = torch.randint(0, 4, (n,), generator=self.g).to(dev).float() * (math.pi / 2)
        flip = (torch.randint(0, 2, (n,), generator=self.g) * 2 - 1).to(dev).float()
        cos, sin = torch.cos(k), torch.sin(k)
        A = torch.stack([torch.stack([cos * flip, -sin], 1), torch.stack([sin * flip, cos], 1)], 1)  # (n, 2, 2)
        shift = torch.zeros(n, 2, device=dev)
        if self.level == "strong":
            area = self._u(n, 0.7, 1.0, dev)
            ratio = torch.exp(self._u(n, math.log(0.85), math.log(1.18), dev))
            w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
            A = A * torch.stack([w, h], 1)[:, None, :]
            shift = torch.stack([(1 - w) * self._u(n, -1, 1, dev), (1 - h) * self._u(n, -1, 1, dev)], 1)
        grid = F.affine_grid(torch.cat([A, shift[:, :, None]], 2), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.level == "strong":
            gray_w = torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)
            x = x * self._u(n, 0.8, 1.2, dev).view(n, 1, 1, 1)
            m = (x * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
            x = (x - m) * self._u(n, 0.8, 1.2, dev).view(n, 1, 1, 1) + m
            gray = (x * gray_w).sum(1, keepdim=True)
            x = (x - gray) * self._u(n, 0.85, 1.15, dev).view(n, 1, 1, 1) + gray
            x = _hue_turn(x, self._u(n, -0.02, 0.02, dev) * 2 * math.pi)
        return x.clamp(0.0, 1.0)


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_turn(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Turn the hue of each image by ``angle`` radians (a rotation of the chroma plane in YIQ)."""
    m = _RGB2YIQ.to(x.device)
    yiq = torch.einsum("ij,njhw->nihw", m, x)
    c, s = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], 1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(m), yiq)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ix = sub.add_parser("index", help="index a dataset root and write a split CSV")
    ix.add_argument("--root", required=True)
    ix.add_argument("--task", default="bm14")
    ix.add_argument("--known-bad", default=None, help="file of stems to skip (e.g. ../shared/data/known_bad.txt)")
    ix.add_argument("--out", required=True, help="split CSV to write")
    ix.add_argument("--val", type=float, default=0.15)
    ix.add_argument("--test", type=float, default=0.15)
    ix.add_argument("--seed", type=int, default=42)
    ix.add_argument("--no-verify", action="store_true", help="skip decoding every file")
    a = ap.parse_args(argv)
    df, rep = index_dataset(a.root, a.task, read_known_bad(a.known_bad), verify=not a.no_verify)
    print(rep.summary())
    if df.empty:
        print("no usable crops found", file=sys.stderr)
        return 1
    out = make_splits(df, a.val, a.test, a.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(a.out, index=False)
    Path(a.out).with_suffix(".report.json").write_text(json.dumps(rep.to_dict(), indent=2))
    print(out.groupby(["split"]).size().to_string())
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
