"""Cells of classes the default model cannot name, as the app classifies them: do they reach a person?

Every crop of ``../shared/data/bm-extra`` (erythroblasts, band neutrophils, plasma cells: classes the default was
never trained on) goes through the app's own predictor with its review rule (``Predictor.predict_items``, the
bundle's inference setting). For each: what the model called it, whether its gate refused it, whether the review
rule sends it to a person, and whether the One cell / gallery hint (``bmcore.caserules.lacks_hint``:
``bmcore.tasks.OFTEN_MISTAKEN_FOR``) offers its true class first. "Reaches a person" = refused, sent to review, or
accepted with a hint that names its true class. No timing is asserted; seconds are recorded for context.

    .venv/bin/python bench/unknown_class_hints.py --out bench/results/unknown_class_hints.json
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmcore import caserules  # noqa: E402
from bmcore.bench import cpu_model, write_result  # noqa: E402
from bmcore.bundle import find_bundles, pick_default  # noqa: E402
from bmcore.cases import cell_inputs  # noqa: E402
from bmcore.inputs import from_paths  # noqa: E402
from bmcore.predictor import Predictor  # noqa: E402
from bmcore.tasks import OFTEN_MISTAKEN_FOR  # noqa: E402


class _Cell:
    """A stored cell as the case rules read it (the fields a classified row carries)."""

    def __init__(self, row):
        self.__dict__.update(row.__dict__)
        self.final_label, self.reviewed_by, self.pending = None, None, False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extra", default=str(REPO.parent / "shared" / "data" / "bm-extra"),
                    help="class folders of crops of classes the model lacks")
    ap.add_argument("--bundle", default=None, help="bundle folder (default: the bundled default model)")
    ap.add_argument("--out", default=None, help="JSON to write")
    a = ap.parse_args(argv)
    pred = Predictor(a.bundle or pick_default(find_bundles(REPO / "assets" / "models")))
    files = sorted(Path(a.extra).glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no crops under {a.extra}")
    t0 = time.perf_counter()
    items = from_paths(files)
    rows = cell_inputs(items, pred.predict_items(items, rules=pred.rules))
    seconds = time.perf_counter() - t0
    per = []
    for f, row in zip(files, rows):
        truth, cell = f.parent.name, _Cell(row)
        hint = caserules.lacks_hint(cell, pred.classes)
        refused, review = cell.rejected, caserules.needs_review(cell)
        per.append({"file": f.name, "class": truth, "model": cell.predicted, "confidence": round(cell.confidence, 3),
                    "refused": refused, "sent_to_review": review, "hint": hint, "hint_names_truth": truth in hint,
                    "reaches_a_person": refused or review or truth in hint,
                    "auto_accepted_wrong": not refused and not review})
    n = len(per)
    out = {
        "what": "crops of classes the default cannot name, through the app's predictor and review rule",
        "data": f"{Path(a.extra).name} ({dict(Counter(p['class'] for p in per))})", "bundle": pred.bundle.name,
        "setting": pred.setting, "rule": pred.rules.describe(), "mapping": OFTEN_MISTAKEN_FOR,
        "crops": n, "refused": sum(p["refused"] for p in per), "sent_to_review": sum(p["sent_to_review"] for p in per),
        "auto_accepted_with_a_wrong_label": sum(p["auto_accepted_wrong"] for p in per),
        "auto_accepted_hint_names_truth": sum(p["auto_accepted_wrong"] and p["hint_names_truth"] for p in per),
        "hint_names_truth": sum(p["hint_names_truth"] for p in per),
        "reach_a_person_without_hint": sum(p["refused"] or p["sent_to_review"] for p in per),
        "reach_a_person_with_hint": sum(p["reaches_a_person"] for p in per),
        "per_crop": per, "seconds": round(seconds, 2), "machine": cpu_model(),
        "note": f"{n} crops only: every real crop of these classes this project has; a figure to be re-measured on "
                "a lab's signed cells (the Agreement page counts them per class)",
    }
    return write_result(out, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
