"""Cell tables and the differential count: shared by the batch CLI, the app and the exported report."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from . import RUO_STATEMENT
from .caserules import HAIRY_UNAVAILABLE, PENDING, critical_codes, hairy_screening, needs_review, review_reasons, status
from .tasks import BLAST_CODES, ERYTHROID_CODES, MYELOID_CODES, NON_CELL_CODES, cell_name
from .cases import inference_text, reviewer_text, signature_text, signer_text

UNCERTAIN = "uncertain or flagged, awaiting review"
REJECTED = "not a recognisable cell crop (rejected by the gate)"
UNREADABLE = "unreadable"
NOT_CLASSIFIED = "not classified yet"


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
                 hairy: list[bool] | None = None, rejected: list[bool] | None = None,
                 pending: list[bool] | None = None) -> Differential:
    """Count a differential from final labels (``None`` = unreadable, or rejected when ``rejected`` says so).

    Cells marked uncertain (and not yet resolved by a reviewer), cells the gate rejected as not a
    recognisable cell crop (unless a reviewer labelled them), artefacts, smudge and not-identifiable
    cells are left out of the denominator and reported as excluded.
    """
    uncertain = uncertain or [False] * len(labels)
    hairy = hairy or [False] * len(labels)
    rejected = rejected or [False] * len(labels)
    pending = pending or [False] * len(labels)
    counts: dict[str, int] = {}
    excluded: dict[str, int] = {}
    for lab, unc, rej, pend in zip(labels, uncertain, rejected, pending):
        if lab is None:
            key = NOT_CLASSIFIED if pend else REJECTED if rej else UNREADABLE
            excluded[key] = excluded.get(key, 0) + 1
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
        notes.append(f"{HAIRY_UNAVAILABLE}: the model was not trained on hairy cells (HAC).")
    missing = sorted(set(counts) - covered)
    if missing:
        notes.append("Reviewer-assigned classes outside the model: " + ", ".join(missing))
    return Differential(counts, pct, den, excluded, me, me_note, blast, n_flag,
                        (100.0 * n_flag / n_cells) if n_cells and "HAC" in covered else None, notes)


def case_differential(case) -> Differential:
    """The differential of a stored case, with reviewers' labels where they exist: the one rule every page, the
    CLI and the report count by. Cells awaiting review (uncertain, critical, hairy-flagged) count once resolved."""
    cells = list(case.cells)
    return differential([c.label for c in cells], list(case.model_classes or []),
                        uncertain=[needs_review(c) for c in cells],
                        hairy=[bool(c.hairy_flag) and status(c) == "ok" for c in cells],
                        rejected=[status(c) == "rejected" and c.final_label is None for c in cells],
                        pending=[status(c) == PENDING for c in cells])


def case_rows(case) -> list[dict]:
    """The exported cell table of a stored case: prediction, review and probabilities per cell."""
    rows = []
    for c in case.cells:
        row = {"case": case.case_code, "position": c.position + 1, "file": c.name,
               "status": status(c), "error": c.error, "rejected_reason": c.reject_reason,
               "sha256": c.sha256,
               "predicted": c.predicted, "confidence": round(c.confidence, 4) if c.confidence is not None else "",
               "uncertain": c.uncertain if c.ok else "", "hairy_flag": c.hairy_flag if c.ok else "",
               "critical": ",".join(critical_codes(c)), "awaiting_review": "; ".join(review_reasons(c)),
               "final_label": c.label or "", "final_name": cell_name(c.label) if c.label else "",
               "reviewed_by": reviewer_text(c), "reviewed_by_user_id": c.reviewed_by_id or "", "reviewed_at": c.reviewed_at.isoformat() if c.reviewed_at else ""}
        for k in case.model_classes or []:
            row[f"p_{k}"] = round((c.probabilities or {}).get(k, 0.0), 4) if c.ok else ""
        rows.append(row)
    return rows


def render_html_report(case, model_meta: dict, audit: list[dict] | None = None, max_flagged: int = 48) -> str:
    """A printable, self-contained HTML report (thumbnails inline) of one case."""
    import base64
    import html

    e = html.escape
    d = case_differential(case)
    metrics = model_meta.get("metrics", {})
    flagged = [c for c in case.cells if needs_review(c) or (status(c) == "ok" and c.hairy_flag)]
    rows = "".join(f"<tr><td>{e(r['class'])}</td><td>{e(r['name'])}</td><td>{r['count']}</td>"
                   f"<td>{r['percent']:.1f}%</td></tr>" for r in d.table())
    excl = ", ".join(f"{e(k)}: {v}" for k, v in d.excluded.items()) or "none"
    thumbs = ""
    for c in flagged[:max_flagged]:
        img = (f"<img src='data:image/jpeg;base64,{base64.b64encode(c.thumbnail).decode()}' width='96'>"
               if c.thumbnail else "")
        why = ", ".join(review_reasons(c)) or "hairy-cell flag (reviewed)"
        thumbs += (f"<figure>{img}<figcaption>#{c.position + 1} {e(c.label or '')} "
                   f"({(c.confidence or 0):.2f})<br>{why}</figcaption></figure>")
    sig = case.signature or {}
    signed = ("<b>Not signed off</b>" if case.status != "signed" else
              f"Signed off by {e(signer_text(case))}" + (f" ({e(sig['role'])})" if sig.get("role") else "")
              + f" on {case.signed_at:%Y-%m-%d %H:%M} UTC")
    signature = (f"<h2>Signature</h2><p>{e(signature_text(sig))}</p>" if sig else "")
    reviewers = sorted({reviewer_text(c) for c in case.cells if c.reviewed_by})
    audit_rows = "".join(f"<tr><td>{a['at']:%Y-%m-%d %H:%M:%S}</td><td>{e(a['who'])}</td><td>{e(a['action'])}</td>"
                         f"<td>{e(a['cell'])}</td><td>{e(a['from'])}</td><td>{e(a['to'])}</td>"
                         f"<td>{e(a['note'])}</td></tr>" for a in (audit or []))
    me = f"{d.me_ratio:.2f} ({e(d.me_note)})" if d.me_ratio is not None else e(d.me_note)
    blast = f"{d.blast_percent:.1f}%" if d.blast_percent is not None else "not available"
    hairy = (f"{d.hairy_flagged} cell(s), {d.hairy_percent:.1f}% of readable cells" if d.hairy_percent is not None
             else hairy_screening(case)[1])
    perf = (f"macro-F1 {metrics['macro_f1']:.3f}, accuracy {metrics['accuracy']:.3f} on the "
            f"{e(metrics.get('split', ''))}" if metrics else "no test metrics recorded")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Case {e(case.case_code)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:left}} .ruo{{border:2px solid #b00;padding:.5em;
color:#b00;font-weight:bold}} figure{{display:inline-block;margin:4px;font-size:11px;text-align:center}}
@media print{{.noprint{{display:none}}}}</style></head><body>
<p class="ruo">{e(RUO_STATEMENT)}</p>
<h1>Bone marrow differential: case {e(case.case_code)}</h1>
<p>Created {case.created_at:%Y-%m-%d %H:%M} UTC · status <b>{e(case.status)}</b> · {signed}<br>
Reviewers: {e(', '.join(reviewers) or 'none')}</p>
<h2>Differential</h2>
<p>{d.denominator} cells counted. Left out of the denominator: {excl}.</p>
<table><tr><th>Code</th><th>Cell type</th><th>Count</th><th>%</th></tr>{rows}</table>
<p>M:E ratio: {me}<br>Blasts: {blast}<br>Hairy-cell screen: {hairy}</p>
{''.join(f'<p><i>{e(n)}</i></p>' for n in d.notes)}
<h2>Flagged cells</h2>{thumbs or '<p>None.</p>'}
<h2>Model</h2>
<p>{e(model_meta.get('name', case.model_name))} ({e(model_meta.get('timm_name', ''))}), weights sha256
<code>{e(case.model_sha256[:16])}…</code>, bmcore {e(model_meta.get('versions', {}).get('bmcore', ''))}{e(', ' + inference_text(case) if inference_text(case) else '')}.<br>
Classes: {e(', '.join(case.model_classes or []))}. Test performance: {perf}; image-level split.</p>
{signature}
<h2>Audit trail</h2><table><tr><th>When (UTC)</th><th>Who</th><th>Action</th><th>Cell</th><th>From</th><th>To</th>
<th>Note</th></tr>{audit_rows}</table>
<p class="ruo">{e(RUO_STATEMENT)}</p></body></html>"""
