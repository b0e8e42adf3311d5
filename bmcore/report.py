"""Cell tables and the differential count: shared by the batch CLI, the app and the exported report."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from . import RUO_STATEMENT
from .tasks import BLAST_CODES, ERYTHROID_CODES, MYELOID_CODES, NON_CELL_CODES, cell_name

UNCERTAIN = "uncertain"


def prediction_rows(preds, classes: list[str]) -> list[dict]:
    """One flat dict per cell (CSV columns), unreadable files included with their error."""
    rows = []
    for p in preds:
        row = {"file": p.name, "status": "ok" if p.ok else "error", "error": p.error,
               "predicted": p.code, "predicted_name": p.label,
               "confidence": round(p.confidence, 4) if p.ok else "",
               "uncertain": p.uncertain if p.ok else "", "hairy_flag": p.hairy_flag if p.ok else "",
               "top3": "; ".join(f"{c} {v:.2f}" for c, v in p.top)}
        for c in classes:
            row[f"p_{c}"] = round(p.probabilities[c], 4) if p.ok else ""
        rows.append(row)
    return rows


def rows_to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


@dataclass
class Differential:
    counts: dict[str, int]  # cells counted in the differential, per class
    percent: dict[str, float]
    denominator: int
    excluded: dict[str, int]  # artefacts / not identifiable / uncertain / unreadable, not in the denominator
    me_ratio: float | None
    me_note: str
    blast_percent: float | None
    hairy_flagged: int = 0
    hairy_percent: float | None = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> list[dict]:
        return [{"class": c, "name": cell_name(c), "count": n, "percent": round(self.percent[c], 1)}
                for c, n in sorted(self.counts.items(), key=lambda kv: -kv[1])]


def differential(labels: list[str | None], model_classes: list[str], *, uncertain: list[bool] | None = None,
                 hairy: list[bool] | None = None) -> Differential:
    """Count a differential from final labels (``None`` = unreadable / rejected).

    Cells marked uncertain (and not yet resolved by a reviewer), artefacts, smudge and
    not-identifiable cells are left out of the denominator and reported as excluded.
    """
    uncertain = uncertain or [False] * len(labels)
    hairy = hairy or [False] * len(labels)
    counts: dict[str, int] = {}
    excluded: dict[str, int] = {}
    for lab, unc in zip(labels, uncertain):
        if lab is None:
            excluded["unreadable or rejected"] = excluded.get("unreadable or rejected", 0) + 1
        elif unc:
            excluded[UNCERTAIN] = excluded.get(UNCERTAIN, 0) + 1
        elif lab in NON_CELL_CODES:
            key = f"{lab} ({cell_name(lab)})"
            excluded[key] = excluded.get(key, 0) + 1
        else:
            counts[lab] = counts.get(lab, 0) + 1
    den = sum(counts.values())
    pct = {c: 100.0 * n / den for c, n in counts.items()} if den else {}
    notes = []
    covered = set(model_classes)
    my = sum(n for c, n in counts.items() if c in MYELOID_CODES)
    er = sum(n for c, n in counts.items() if c in ERYTHROID_CODES)
    if not covered & ERYTHROID_CODES:
        me, me_note = None, "not available: the model does not recognise erythroid precursors (EBO, PEB)"
    elif er == 0:
        me, me_note = None, "not defined: no erythroid precursors counted"
    else:
        me = my / er
        me_note = f"{my} myeloid : {er} erythroid cells"
    blast = (100.0 * counts.get("BLA", 0) / den) if (den and covered & BLAST_CODES) else None
    n_flag = sum(bool(h) for h, lab in zip(hairy, labels) if lab is not None)
    n_cells = sum(1 for lab in labels if lab is not None)
    if "HAC" not in covered:
        notes.append("Hairy-cell screening is off: this model was not trained on hairy cells (HAC).")
    missing = sorted(set(counts) - covered)
    if missing:
        notes.append("Reviewer-assigned classes outside the model: " + ", ".join(missing))
    return Differential(counts, pct, den, excluded, me, me_note, blast, n_flag,
                        (100.0 * n_flag / n_cells) if n_cells and "HAC" in covered else None, notes)


def statement() -> str:
    return RUO_STATEMENT
