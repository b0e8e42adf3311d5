"""A prediction as one flat row (the columns of the batch CLI's CSV and of the archive's Parquet shards), and rows as
CSV. Light on purpose: no database and no pandas, so an archive worker that imports it starts sooner (importing
``bmcore.report``, which reaches SQLAlchemy through the case texts, cost each Ray worker 0.3 s)."""

from __future__ import annotations

import csv
import io

from .caserules import status
from .text import spreadsheet_cell


def prediction_rows(preds, classes: list[str]) -> list[dict]:
    """One flat dict per cell (CSV columns), unreadable files included with their error."""
    rows = []
    for p in preds:
        row = {"file": p.name, "status": status(p), "error": p.error,
               "rejected_reason": p.reject_reason,
               # the gate's unfamiliarity score (higher: less like the training crops); empty without a gate
               "gate_score": round(p.ood_score, 3) if p.ok and p.ood_score == p.ood_score else "",
               "predicted": p.code, "predicted_name": p.label,
               "confidence": round(p.confidence, 4) if p.ok else "",
               "uncertain": p.uncertain if p.ok else "", "hairy_flag": p.hairy_flag if p.ok else "",
               "critical": ",".join(p.critical) if p.ok else "", "needs_review": p.needs_review if p.ok else "",
               "top3": "; ".join(f"{c} {v:.2f}" for c, v in p.top)}
        for c in classes:
            row[f"p_{c}"] = round(p.probabilities[c], 4) if p.ok else ""
        rows.append(row)
    return rows


def rows_to_csv(rows: list[dict]) -> str:
    """The rows as CSV for a spreadsheet: every text cell that a spreadsheet would run as a formula (a case id or file
    name starting with ``= + - @``, tab or CR) is neutralised with a leading ``'`` (``bmcore.text.spreadsheet_cell``)."""
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows({k: spreadsheet_cell(v) for k, v in r.items()} for r in rows)
    return buf.getvalue()
