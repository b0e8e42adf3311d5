"""Case cell tables and the case report (what every export says, ``CaseReport``; the HTML rendering here): shared by
the batch CLI, the app and the exports. The differential itself is counted in ``bmcore.differential``."""

from __future__ import annotations

from dataclasses import dataclass

from . import RUO_STATEMENT
from .demo import DEMO_NOTE
from .caserules import (HAIRY_UNAVAILABLE, critical_codes, hairy_screening, model_flags, rejected_text,
                        review_reasons, said_text, status, summary)
from .differential import DEFAULT_TARGET, Differential, blast_text, case_differential, pending_text
from .tasks import CELL_NAMES, HAIRY_CELL_CODE, cell_name, codes_text
from .text import clean
from .casetext import inference_text, reviewer_text, signature_text, signer_text, who_text
from .schema import SPECIMEN_FIELDS, VIA_GALLERY, VIA_ONE, WHO_TYPED



def box_text(cell) -> str:
    """Where a cell found by the cell finder lies: "<field> x0 y0 x1 y1" (px of the original field, as the CLI's
    CSV writes the box); empty for uploaded single-cell crops."""
    o = getattr(cell, "origin", None) or {}
    return f"{o['field']} {' '.join(map(str, o['box']))}" if o.get("box") else ""


def case_rows(case) -> list[dict]:
    """The exported cell table of a stored case: prediction, review and probabilities per cell."""
    rows = []
    for c in case.cells:
        row = {"case": case.case_code, "demo_case": bool(getattr(case, "demo", False)), "position": c.position + 1, "file": c.name, "box": box_text(c),
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


PRELIMINARY = "PRELIMINARY - not signed off"


@dataclass
class HairyCount:
    """The hairy-cell line of a case: counted from the labels that count (the reviewer's, else the model's); the
    model's flags are reported beside it, as awaiting review or as relabelled by a reviewer."""
    available: bool
    counted: int = 0            # cells counted as HAC in the differential
    denominator: int = 0
    flagged: int = 0            # classified cells the model flagged (P(HAC) at or above the case's threshold)
    flags_open: int = 0         # ... not reviewed yet
    flags_relabelled: int = 0   # ... a reviewer gave another class
    text: str = ""


def case_hairy(case, d: Differential | None = None) -> HairyCount:
    available, how = hairy_screening(case)
    if not available:
        return HairyCount(False, text=how)
    d = d or case_differential(case)
    ok = [c for c in case.cells if status(c) == "ok"]
    flagged = [c for c in ok if c.hairy_flag]
    n_open = sum(c.final_label is None for c in flagged)
    n_rel = sum(c.final_label is not None and c.final_label != HAIRY_CELL_CODE for c in flagged)
    n = d.counts.get(HAIRY_CELL_CODE, 0)
    text = (f"{n} cell(s) counted as hairy cells (HAC)"
            + (f", {100 * n / d.denominator:.1f}% of {d.denominator} counted cells" if d.denominator else "")
            + f". The model flagged {len(flagged)} cell(s) when classifying: {n_open} awaiting review, {n_rel} given "
              "another class by a reviewer.")
    return HairyCount(True, n, d.denominator, len(flagged), n_open, n_rel, text)


def audit_summary(audit: list[dict], names: dict[int, str] | None = None) -> list[dict]:
    """Who did what, from the audit trail: per person, the cells confirmed and relabelled one by one and in gallery
    (bulk) actions, with the number of gallery actions, undos, sign-offs, reopenings and other events. Rows from
    before the way was recorded count as gallery rows when their action covered more than one cell. ``names``: user
    id -> display name; a person is shown as "Display Name (username)", and keyed by ``username``."""
    size: dict[str, int] = {}
    for a in audit:
        if a.get("action_id"):
            size[a["action_id"]] = size.get(a["action_id"], 0) + 1
    people: dict[str, dict] = {}
    for a in audit:
        p = people.setdefault(a["who"], {"who": person_text(a.get("user_id"), a["who"], names),
                                         "username": a["who"], "confirmed one by one": 0, "relabelled one by one": 0,
                                         "confirmed in gallery": 0, "moved in gallery": 0, "gallery actions": set(),
                                         "undone": 0, "other": []})
        act = a["action"]
        if act in ("confirm", "reclassify"):
            via = a.get("via") or (VIA_GALLERY if size.get(a.get("action_id"), 0) > 1 else VIA_ONE)
            if via == VIA_GALLERY:
                p["confirmed in gallery" if act == "confirm" else "moved in gallery"] += 1
                p["gallery actions"].add(a.get("action_id"))
            else:
                p["confirmed one by one" if act == "confirm" else "relabelled one by one"] += 1
        elif act == "undo":
            p["undone"] += 1
        else:
            p["other"].append(act)
    out = []
    for p in people.values():
        p["gallery actions"] = len(p["gallery actions"])
        other: dict[str, int] = {}
        for act in p["other"]:
            other[act] = other.get(act, 0) + 1
        p["other"] = ", ".join(f"{k} ×{v}" if v > 1 else k for k, v in other.items())
        out.append(p)
    return out


def person_text(user_id, username: str, names: dict[int, str] | None) -> str:
    """A signed-in user as reports show them: "Display Name (username)", or the username alone when no display name
    is known (e.g. a typed name from before accounts, already marked by ``who_text``)."""
    name = (names or {}).get(user_id) if user_id is not None else None
    return f"{name} ({username})" if name and name != username else username


@dataclass
class CaseReport:
    """Everything a report or export of one case says, computed once from the store's case rules; the HTML, PDF and
    FHIR renderings only lay it out."""
    case: object
    model: dict
    audit: list[dict]
    creator: str
    signed: bool
    status_line: str
    d: Differential
    hairy: HairyCount
    me_text: str
    blast_text: str
    rejected: list            # every image the gate would not judge, with what reviewers made of it (said_text)
    flagged: list             # (cell, why) classified cells the model flagged, reviewed or not
    reviewers: list[str]
    specimen: list[tuple[str, str]]
    target: int
    target_is_default: bool
    people: list[dict]
    notes: list[str]
    rejected_text: str = ""   # how many were refused, labelled, dismissed, still open
    pending_text: str = ""    # what is still open in the count ("" when nothing is)
    demo_text: str = ""       # the demo case says so on every page of every export ("" for the lab's cases)

    @property
    def progress_text(self) -> str:
        t = self.target
        return (f"{self.d.denominator} of {t} cells counted ({min(100.0, 100 * self.d.denominator / t):.0f}% of the "
                f"target count{' (default; none set for this case)' if self.target_is_default else ''})")


def build_report(case, model_meta: dict | None = None, audit: list[dict] | None = None,
                 users: list[dict] | None = None) -> CaseReport:
    """``users``: ``CaseStore.list_users()`` (the creator is shown by display name)."""
    model_meta = model_meta or {}
    audit = audit or []
    d = case_differential(case)
    names = {u["id"]: (u.get("name") or u["username"]) for u in (users or [])}
    if case.created_by_id is None:  # a case from before sign-in accounts: a typed name, or none at all
        creator = (who_text(case.created_by, WHO_TYPED) if case.created_by and case.created_by != "(name not entered)"
                   else "a user whose name was not recorded (the case predates sign-in accounts)")
    else:
        creator = person_text(case.created_by_id, case.created_by, names)
    signed = case.status == "signed"
    sig = case.signature or {}
    status_line = (f"Signed off by {signer_text(case)}" + (f" ({sig['role']})" if sig.get("role") else "")
                   + f" on {case.signed_at:%Y-%m-%d %H:%M} UTC" if signed else "Not signed off")
    flagged = []
    for c in case.cells:  # what the model flagged when classifying; then what a reviewer made of it
        flags = model_flags(c)
        if flags:
            flagged.append((c, ", ".join(flags) + ("" if c.final_label else "; awaiting review")))
    me = (f"{d.me_ratio:.2f} ({d.me_note})" if d.me_ratio is not None else d.me_note)
    spec = [(label, (case.specimen or {}).get(k, "")) for k, label in SPECIMEN_FIELDS]
    target = getattr(case, "target_count", None)
    notes = [n for n in d.notes if not n.startswith(HAIRY_UNAVAILABLE)]  # the hairy line says it once
    return CaseReport(case, model_meta, audit, creator, signed, status_line, d, case_hairy(case, d), me,
                      blast_text(case, d), [c for c in case.cells if status(c) == "rejected"],
                      flagged, sorted({person_text(c.reviewed_by_id, reviewer_text(c), names)
                                       for c in case.cells if c.reviewed_by}), spec,
                      target or DEFAULT_TARGET, target is None, audit_summary(audit, names), notes,
                      rejected_text(summary(case)), pending_text(d), DEMO_NOTE if getattr(case, "demo", False) else "")


def cell_caption(c) -> str:
    """A cell's caption in every report: its number and who said what ("#45 model: NIF 0.88 -> reviewer: EBO")."""
    return f"#{c.position + 1} {said_text(c)}"


def model_text(r: CaseReport) -> str:
    m, case = r.model, r.case
    metrics = m.get("metrics", {})
    perf = (f"macro-F1 {metrics['macro_f1']:.3f}, accuracy {metrics['accuracy']:.3f} on the {metrics.get('split', '')}"
            " split (image-level)" if metrics.get("macro_f1") is not None else "no test metrics recorded")
    name = m.get("name") or case.model_name or "unknown"
    ver = m.get("versions", {}).get("bmcore", "")
    inf = inference_text(case)
    return (f"{name}" + (f" ({m['timm_name']})" if m.get("timm_name") else "") + (f", bmcore {ver}" if ver else "")
            + (f", {inf}" if inf else "") + f". Weights sha256: {case.model_sha256 or 'not recorded'}. "
            f"Test performance: {perf}.")


def classes_text(case) -> str:
    covered = list(case.model_classes or [])
    missing = sorted(set(CELL_NAMES) - set(covered))
    return ("Classes covered: " + ", ".join(f"{c} ({cell_name(c)})" for c in covered)
            + (". Not covered: " + codes_text(missing) if missing else "") + ".")


def render_html_report(case, model_meta: dict, audit: list[dict] | None = None, max_flagged: int = 48,
                       users: list[dict] | None = None) -> str:
    """A printable, self-contained HTML report (thumbnails inline) of one case."""
    import base64
    import html

    def e(value) -> str:  # every string of the report: HTML-escaped, without control or bidi characters
        return html.escape(clean(value))
    r = build_report(case, model_meta, audit, users)
    d = r.d
    rows = "".join(f"<tr><td>{e(t['class'])}</td><td>{e(t['name'])}</td><td>{t['count']}</td>"
                   f"<td>{e(t['percent_text'])}</td></tr>" for t in d.table())
    excl = ", ".join(f"{e(k)}: {v}" for k, v in d.excluded.items()) or "none"

    def fig(c, why):
        img = (f"<img src='data:image/jpeg;base64,{base64.b64encode(c.thumbnail).decode()}' width='96'>"
               if c.thumbnail else "")
        return f"<figure>{img}<figcaption>{e(cell_caption(c))}<br>{e(why)}</figcaption></figure>"

    thumbs = "".join(fig(c, why) for c, why in r.flagged[:max_flagged])
    more = (f"<p>… and {len(r.flagged) - max_flagged} more (see the cell table).</p>"
            if len(r.flagged) > max_flagged else "")
    rej = "".join(fig(c, c.reject_reason or "not judged by the gate") for c in r.rejected[:max_flagged])
    sig = case.signature or {}
    signature = f"<h2>Signature</h2><p>{e(signature_text(sig))}</p>" if sig else ""
    prelim = "" if r.signed else f'<p class="prelim">{e(PRELIMINARY)}</p>'
    spec = "".join(f"<tr><th>{e(k)}</th><td>{e(v) or '<i>not entered</i>'}</td></tr>" for k, v in r.specimen)
    people = "".join(f"<tr><td>{e(p['who'])}</td><td>{p['confirmed one by one']}</td><td>{p['relabelled one by one']}"
                     f"</td><td>{p['confirmed in gallery']}</td><td>{p['moved in gallery']}</td>"
                     f"<td>{p['gallery actions']}</td><td>{p['undone']}</td><td>{e(p['other'])}</td></tr>"
                     for p in r.people)
    audit_rows = "".join(f"<tr><td>{a['at']:%Y-%m-%d %H:%M:%S}</td><td>{e(a['who'])}</td><td>{e(a['action'])}"
                         f"{' (gallery)' if a.get('via') == VIA_GALLERY else ''}</td>"
                         f"<td>{e(a['cell'])}</td><td>{e(a['from'])}</td><td>{e(a['to'])}</td>"
                         f"<td>{e(a['note'])}</td></tr>" for a in r.audit)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Case {e(case.case_code)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:left}} .ruo{{border:2px solid #b00;padding:.5em;
color:#b00;font-weight:bold}} .prelim{{background:#b00;color:#fff;padding:.5em;font-weight:bold;font-size:1.2em}}
figure{{display:inline-block;margin:4px;font-size:11px;text-align:center}}
@media print{{.noprint{{display:none}}}}</style></head><body>
<p class="ruo">{e(RUO_STATEMENT)}</p>{prelim}{f'<p class="prelim">{e(r.demo_text)}</p>' if r.demo_text else ''}
<h1>Bone marrow differential: case {e(case.case_code)}</h1>
<p>Created {case.created_at:%Y-%m-%d %H:%M} UTC by {e(r.creator)} · {e(r.status_line)}<br>
Reviewers: {e(', '.join(r.reviewers) or 'none')}</p>
<h2>Specimen</h2><table>{spec}</table>
<h2>Differential</h2>
<p>{d.denominator} cells counted. {e(r.progress_text)}. Left out of the denominator: {excl}.</p>
<table><tr><th>Code</th><th>Cell type</th><th>Count</th><th>% of counted cells</th></tr>{rows}</table>
{f'<p><b>{e(r.pending_text)}.</b></p>' if r.pending_text else ''}
<p>M:E ratio: {e(r.me_text)}<br>Blasts: {e(r.blast_text)}<br>Hairy cells: {e(r.hairy.text)}</p>
{''.join(f'<p><i>{e(n)}</i></p>' for n in r.notes)}
<h2>Flagged and critical cells ({len(r.flagged)})</h2>{thumbs or '<p>None.</p>'}{more}
<h2>Not judged by the gate ({len(r.rejected)})</h2>
<p>{e(r.rejected_text)} The model would not judge these images: they look unlike its training crops. Each counts
only once a reviewer gives it a class; a dismissed image is not a cell.</p>{rej}
<h2>Model</h2><p>{e(model_text(r))}<br>{e(classes_text(case))}</p>
{signature}
<h2>Who did what</h2><table><tr><th>Who</th><th>Confirmed one by one</th><th>Relabelled one by one</th>
<th>Confirmed in gallery</th><th>Moved in gallery</th><th>Gallery actions</th><th>Undone</th><th>Other</th></tr>
{people}</table>
<h2>Audit trail ({len(r.audit)} events)</h2><table><tr><th>When (UTC)</th><th>Who</th><th>Action</th><th>Cell</th>
<th>From</th><th>To</th><th>Note</th></tr>{audit_rows}</table>
{prelim}<p class="ruo">{e(RUO_STATEMENT)}</p></body></html>"""
