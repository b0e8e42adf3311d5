"""The differential count of a case, from the labels that count (a reviewer's, else the model's), and every figure
derived from it: class percentages, the M:E ratio, the blast percentage and their caveats; and what a signer must
confirm. One computation, read by every page, the CLI and each report (HTML, PDF, FHIR, CSV).

A figure is never shown as a number while cells it depends on are pending (awaiting review, gate-rejected and not
yet reviewed, or not classified yet): it is given as the range it can still take. Derived figures and caveats follow
the final labels, whatever the model could name: "the model cannot name X" is said only while cells carry the
model's label alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .caserules import (HAIRY_UNAVAILABLE, PENDING, REJECTED as ST_REJECTED, needs_review, possible_blast,
                        rejected_open, status)
from .tasks import (BLAST_CODES, CELL_NAMES, DISMISSED_CODE, ERYTHROID_CODES, HAIRY_CELL_CODE, MYELOID_CODES,
                    NON_CELL_CODES, cell_name, codes_text)

UNCERTAIN = "uncertain or flagged, awaiting review"
REJECTED = "not judged by the model's gate, awaiting review"
DISMISSED = "dismissed by a reviewer as not a cell"
UNREADABLE = "unreadable"
NOT_CLASSIFIED = "not classified yet"
DEFAULT_TARGET = 200  # cells, when the case has no target count of its own


@dataclass
class Differential:
    counts: dict[str, int]  # cells counted in the differential, per class
    percent: dict[str, float]  # of the counted cells (final only when ``pending`` is 0)
    denominator: int
    excluded: dict[str, int]  # artefacts / not identifiable / awaiting review / unreadable, not in the denominator
    me_ratio: float | None
    me_note: str
    blast_percent: float | None  # None while cells are pending (see ``blast_range``) or the model has no blast class
    hairy_flagged: int = 0
    hairy_percent: float | None = None
    notes: list[str] = field(default_factory=list)
    pending: int = 0         # cells that may still enter the count: awaiting review, gate-rejected, not classified
    pending_blasts: int = 0  # ... of them, possible blasts (the model's blast flag or top class)
    unreviewed: int = 0      # counted cells that carry only the model's label
    always: tuple = ()       # classes listed even at 0 (a model's blast class: a missing row reads "not looked for")

    def percent_range(self, code: str) -> tuple[float, float] | None:
        """(lowest, highest) % of class ``code`` once the pending cells are resolved; None when none is pending."""
        if not self.pending:
            return None
        n, total = self.counts.get(code, 0), self.denominator + self.pending
        return 100.0 * n / total, 100.0 * (n + self.pending) / total

    def percent_text(self, code: str) -> str:
        """The class's percentage as every page and report prints it: a number only when nothing is pending."""
        r = self.percent_range(code)
        if r is not None:
            return f"pending: {r[0]:.1f}–{r[1]:.1f}%"
        return f"{self.percent.get(code, 0.0):.1f}%" if self.denominator else "–"

    @property
    def blast_range(self) -> tuple[float, float] | None:
        return self.percent_range("BLA")

    def table(self) -> list[dict]:
        counts = {c: 0 for c in self.always} | self.counts
        return [{"class": c, "name": cell_name(c), "count": n, "percent": round(self.percent.get(c, 0.0), 1),
                 "percent_text": self.percent_text(c)}
                for c, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def differential(labels: list[str | None], model_classes: list[str], *, uncertain: list[bool] | None = None,
                 hairy: list[bool] | None = None, rejected: list[bool] | None = None,
                 pending: list[bool] | None = None, reviewed: list[bool] | None = None,
                 possible_blast: list[bool] | None = None) -> Differential:
    """Count a differential from final labels (``None`` = unreadable, or rejected / not classified when those say so).

    Cells awaiting review (``uncertain``), gate-rejected images nobody labelled, artefacts, smudge and
    not-identifiable cells and dismissed images are left out of the denominator and reported as excluded.
    ``reviewed``: the label is a reviewer's (default: none is); ``possible_blast``: the model flagged the cell as a
    possible blast.
    """
    n = len(labels)
    uncertain, hairy, rejected, pending, reviewed, possible_blast = (
        x or [False] * n for x in (uncertain, hairy, rejected, pending, reviewed, possible_blast))
    counts: dict[str, int] = {}
    excluded: dict[str, int] = {}
    n_pending = n_pb = n_unrev = 0
    for lab, unc, rej, pend, rev, pb in zip(labels, uncertain, rejected, pending, reviewed, possible_blast):
        if lab is None:
            key = NOT_CLASSIFIED if pend else REJECTED if rej else UNREADABLE
            excluded[key] = excluded.get(key, 0) + 1
            n_pending += bool(pend or rej)
            n_pb += bool(rej and pb)
        elif unc:
            excluded[UNCERTAIN] = excluded.get(UNCERTAIN, 0) + 1
            n_pending += 1
            n_pb += bool(pb)
        elif lab == DISMISSED_CODE:
            excluded[DISMISSED] = excluded.get(DISMISSED, 0) + 1
        elif lab in NON_CELL_CODES:
            key = f"{lab} ({cell_name(lab)})"
            excluded[key] = excluded.get(key, 0) + 1
        else:
            counts[lab] = counts.get(lab, 0) + 1
            n_unrev += not rev
    covered = set(model_classes)
    den = sum(counts.values())
    pct = {c: 100.0 * k / den for c, k in counts.items()} if den else {}
    me, me_note = _me(counts, covered, n_unrev, n_pending)
    blast = (100.0 * counts.get("BLA", 0) / den) if (den and not n_pending and (covered & BLAST_CODES or "BLA" in counts)) \
        else None
    n_flag = sum(bool(h) for h, lab in zip(hairy, labels) if lab is not None)
    n_cells = sum(1 for lab in labels if lab is not None)
    notes = []
    if HAIRY_CELL_CODE not in covered:
        notes.append(f"{HAIRY_UNAVAILABLE}: the model was not trained on hairy cells (HAC).")
    missing = sorted(set(counts) - covered)
    if missing:
        notes.append("Classes given by reviewers that the model cannot name: "
                     + ", ".join(f"{c} ({cell_name(c)}) {counts[c]}" for c in missing))
    return Differential(counts, pct, den, excluded, me, me_note, blast, n_flag,
                        (100.0 * n_flag / n_cells) if n_cells and HAIRY_CELL_CODE in covered else None, notes,
                        n_pending, n_pb, n_unrev, tuple(sorted(covered & BLAST_CODES)))


def _me(counts: dict[str, int], covered: set[str], unreviewed: int, pending: int) -> tuple[float | None, str]:
    """The M:E ratio from the counted cells' final labels, and what holds it back while labels are the model's."""
    my = sum(k for c, k in counts.items() if c in MYELOID_CODES)
    er = sum(k for c, k in counts.items() if c in ERYTHROID_CODES)
    blind = not covered & ERYTHROID_CODES and unreviewed  # cells the model labelled, and it cannot name erythroid
    caveat = []
    if blind:
        caveat.append(f"{unreviewed} counted cell(s) carry only the model's label, and the model cannot name erythroid "
                      "precursors (EBO, PEB)")
    if pending:
        caveat.append(f"{pending} cell(s) await review")
    tail = ("; provisional: " + "; ".join(caveat)) if caveat else ""
    if er == 0:
        if blind:
            return None, ("not available yet: " + caveat[0] + "; reviewers' labels give the ratio"
                          + (f"; {pending} cell(s) await review" if pending else ""))
        return None, "not defined: no erythroid precursors counted" + tail
    return my / er, f"{my} myeloid : {er} erythroid cells" + tail


def case_differential(case) -> Differential:
    """The differential of a stored case, with reviewers' labels where they exist: the one rule every page, the
    CLI and the report count by. Cells awaiting review (uncertain, critical, hairy-flagged) count once resolved."""
    cells = list(case.cells)
    return differential([c.label for c in cells], list(case.model_classes or []),
                        uncertain=[needs_review(c) for c in cells],
                        hairy=[bool(c.hairy_flag) and status(c) == "ok" for c in cells],
                        rejected=[rejected_open(c) for c in cells],
                        pending=[status(c) == PENDING for c in cells],
                        reviewed=[c.final_label is not None for c in cells],
                        possible_blast=[status(c) in ("ok", ST_REJECTED) and possible_blast(c) for c in cells])


def pending_text(d: Differential) -> str:
    """What is still open in the count, in words; empty when nothing is."""
    if not d.pending:
        return ""
    return (f"{d.pending} cell(s) await review ({d.pending_blasts} possible blast(s)); every percentage is the range "
            "it can still take until they are resolved")


def blast_text(case, d: Differential) -> str:
    """The blast percentage with its denominator and what it excludes; while cells are pending, the range it can still
    take; the model's blind spots only while counted cells carry the model's label alone."""
    covered = set(case.model_classes or [])
    if not covered & BLAST_CODES and "BLA" not in d.counts:
        return "not available: the model does not recognise blasts"
    n = d.counts.get("BLA", 0)
    if d.pending:
        lo, hi = d.blast_range
        return (f"pending: {d.pending_blasts} possible blast(s) and {d.pending - d.pending_blasts} other cell(s) await "
                f"review; until they are resolved the blast percentage can be anywhere from {lo:.1f}% to {hi:.1f}% "
                f"({n} blast(s) among {d.denominator} cells counted so far)")
    if not d.denominator:
        return "not available: no cells counted yet"
    out = (f"{d.blast_percent:.1f}% ({n} of {d.denominator} counted cells; artefacts, smudge and not-identifiable "
           "cells and dismissed images are not in the denominator)")
    missing = sorted(set(CELL_NAMES) - NON_CELL_CODES - covered)
    if missing and d.unreviewed:
        ery = sorted(ERYTHROID_CODES - covered)
        out += (f". {d.unreviewed} of the counted cells carry only the model's label, and the model does not recognise "
                + (("erythroid precursors (" + ", ".join(ery) + ") and ") if ery else "")
                + f"{len(missing) - len(ery)} other cell type(s) ({codes_text(sorted(set(missing) - set(ery)))}); "
                "such cells among them are counted as another class")
    elif missing:
        out += f". Every one of the {d.denominator} counted cells carries a reviewer's label"
    return out


@dataclass
class SignOffChecks:
    """What a signer must confirm on purpose, beyond the blockers: a case with no specimen / accession number, and a
    count under the case's target. Both are recorded in the signature."""
    specimen_id: str
    counted: int
    target: int

    @property
    def no_specimen_id(self) -> bool:
        return not self.specimen_id

    @property
    def under_target(self) -> bool:
        return self.counted < self.target

    def refusals(self, *, no_specimen_id: bool, under_target: bool) -> list[str]:
        out = []
        if self.no_specimen_id and not no_specimen_id:
            out.append("the case has no specimen / accession number: enter it, or confirm that you sign without one")
        if self.under_target and not under_target:
            out.append(f"only {self.counted} of the target {self.target} cells are counted: confirm that you sign "
                       "under the target count")
        return out


def sign_off_checks(case) -> SignOffChecks:
    return SignOffChecks(((case.specimen or {}).get("specimen_id") or "").strip(),
                         case_differential(case).denominator, case.target_count or DEFAULT_TARGET)
