"""The laboratory's labelled cells a model may learn from, and how they are split: what ``python -m bmcore learn``
(``train.learn``) and the app's Model updates page both read, so that the page can say before a job starts
whether there is enough, and what is missing.

From the store: the cells of signed-off cases only, never a demo case, deduplicated by sha256, each with the label it
was signed with; an image the gate refused only where a reviewer gave it a class; dismissed images never; only
classes of the model's task. The image is the stored one (the upload itself for a JPEG crop of at most 256 px, else a
256 px copy). From a folder: one sub-folder per class code; a case is the first folder below the class folder
(TCIA's download nests them); images directly in a class folder are each their own case (image-level).

The lab test set is held out **by case**, by a hash of the case id: all cells of a case fall on one side, and the
same case always on the same side.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .tasks import DISMISSED_CODE, get_task

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MIN_CELLS = 100   # lab training cells below which nothing is learnt
MIN_CASES = 3     # cases below which no case-level test set can be held out


@dataclass(frozen=True)
class LabCell:
    case: str
    label: str
    sha256: str
    data: bytes


def cells_from_store(store, task: str, *, images: bool = True) -> tuple[list[LabCell], dict]:
    """Signed, non-demo cells of ``store`` (a ``CaseStore``, or its URL) with the labels they were signed with.
    ``images`` False: without their bytes (``LabCell.data`` empty; what a page needs to say how much there is, read
    without loading a thumbnail)."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import defer

    from .caserules import OK, REJECTED, status
    from .cases import CaseStore
    from .schema import STATUS_SIGNED, Case, Cell

    store = store if isinstance(store, CaseStore) else CaseStore(store)
    classes = set(get_task(task).classes)
    out, seen, left = [], set(), Counter()
    with store.session() as s:
        signed = select(Case.id).where(Case.status == STATUS_SIGNED)
        left["demo case"] = s.scalar(select(func.count()).select_from(Cell).join(Case)
                                     .where(Case.status == STATUS_SIGNED, Case.demo.is_(True))) or 0
        q = (select(Cell, Case.case_code).join(Case).where(Cell.case_id.in_(signed), Case.demo.is_(False))
             .order_by(Cell.case_id, Cell.position))
        if not images:
            q = q.options(defer(Cell.thumbnail))
        for c, code in s.execute(q):
            st = status(c)
            label = c.label
            if st == REJECTED and c.final_label is None or st not in (OK, REJECTED) or not label:
                left["not a labelled cell"] += 1
            elif label == DISMISSED_CODE:
                left["dismissed, not a cell"] += 1
            elif label not in classes:
                left[f"{label}: not a class of {task}"] += 1
            elif images and not c.thumbnail:
                left["no stored image"] += 1
            elif c.sha256 in seen:
                left["the same image again (sha256)"] += 1
            else:
                seen.add(c.sha256)
                out.append(LabCell(code, label, c.sha256, bytes(c.thumbnail) if images else b""))
    left = +left  # the reasons that occurred
    return out, {"source": "signed cases of the store", "left_out": dict(left)}


def cells_from_folder(root: str | Path, task: str) -> tuple[list[LabCell], dict]:
    """Crops under ``root/<CLASS>/``; the case is the first folder below the class folder, else the image itself."""
    root = Path(root)
    classes = set(get_task(task).classes)
    out, seen, left, flat = [], set(), Counter(), 0
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name not in classes:
            left[f"{d.name}: not a class of {task}"] += sum(1 for _ in d.rglob("*") if _.is_file())
            continue
        for f in sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXT):
            data = f.read_bytes()
            h = hashlib.sha256(data).hexdigest()
            if h in seen:
                left["the same image again (sha256)"] += 1
                continue
            seen.add(h)
            rel = f.relative_to(d)
            flat += len(rel.parts) == 1
            out.append(LabCell(rel.parts[0] if len(rel.parts) > 1 else f"image:{h[:16]}", d.name, h, data))
    rule = ("case = the first folder below each class folder" + (f"; {flat} images directly in a class folder are "
                                                                 "each their own case (image-level)" if flat else ""))
    return out, {"source": f"folder {root.name}", "case_rule": rule, "left_out": dict(left)}


def _bucket(case: str, seed: int) -> float:
    """A case's place in [0, 1), from a hash of its id: the same case always falls on the same side."""
    return int(hashlib.sha256(f"{seed}:{case}".encode()).hexdigest()[:12], 16) / 16 ** 12


def split_by_case(cells: list[LabCell], test_share: float, val_share: float, seed: int = 0) -> dict[str, str]:
    """{case: "train" | "val" | "test"}: about ``test_share`` of the cases to the lab test set (at least one), about
    ``val_share`` of the rest to validation (at least one when three or more remain), by a hash of the case id."""
    cases = sorted({c.case for c in cells}, key=lambda k: _bucket(k, seed))
    n_test = max(1, round(test_share * len(cases)))
    rest = cases[n_test:]
    n_val = max(1 if len(rest) >= 3 else 0, round(val_share * len(rest)))
    return {**{k: "test" for k in cases[:n_test]}, **{k: "val" for k in rest[:n_val]},
            **{k: "train" for k in rest[n_val:]}}


def refusal_to_start(cells: list[LabCell], sides: dict[str, str]) -> str:
    """Why nothing can be learnt from these cells ("" when it can), in words that say what is missing."""
    n_cases = len({c.case for c in cells})
    n_train = sum(sides[c.case] == "train" for c in cells)
    missing = []
    if n_cases < MIN_CASES:
        missing.append(f"{n_cases} case(s): at least {MIN_CASES} are needed to hold a test set out by case")
    if n_train < MIN_CELLS:
        missing.append(f"{n_train} training cell(s) once the test and validation cases are held out: at least "
                       f"{MIN_CELLS} are needed")
    return "; ".join(missing)


def choose_classes(base_classes: list[str], task: str, train_counts: Counter, min_cells: int) -> list[str]:
    """The base model's classes plus each task class with at least ``min_cells`` training cells, in task order."""
    return [c for c in get_task(task).classes if c in base_classes or train_counts[c] >= min_cells]
