"""The case rules, in one place: what a cell's status is, what needs review, what is flagged, what counts.

Pages, the CLI, the store and the report all read a case through these functions; none of them
re-derives a rule. They take stored ``Cell``/``Case`` objects (or anything with the same attributes)
and never touch the database.
"""

from __future__ import annotations

from dataclasses import dataclass

from .tasks import DISMISSED_CODE, HAIRY_CELL_CODE, OFTEN_MISTAKEN_FOR, cell_name
from .triage import ReviewRules

# status words, the same in every table, CSV and report
PENDING, UNREADABLE, REJECTED, OK = "pending", "unreadable", "rejected", "ok"

HAIRY_UNAVAILABLE = "Hairy-cell screening unavailable"


def status(cell) -> str:
    if getattr(cell, "pending", False):
        return PENDING
    if not cell.ok:
        return UNREADABLE
    return REJECTED if cell.rejected else OK


def critical_codes(cell) -> list[str]:
    return [c for c in (getattr(cell, "critical", "") or "").split(",") if c]


def possible_blast(cell) -> bool:
    """The model's calibrated P(blast) reached the case's blast review threshold, whatever the top class: the one
    meaning of "possible blast" for the Classify tile and the Differential's pending count."""
    from .tasks import BLAST_CODES

    return bool(BLAST_CODES & set(critical_codes(cell)))


def model_flags(cell) -> list[str]:
    """What the model's output flags on a classified cell (critical classes, hairy cell, uncertain), whether or not a
    person has reviewed it since: fixed once the cell is classified."""
    if status(cell) != OK:
        return []
    out = [f"possible {cell_name(c).lower()}" for c in critical_codes(cell) if c != HAIRY_CELL_CODE]
    if cell.hairy_flag or HAIRY_CELL_CODE in critical_codes(cell):
        out.append("hairy-cell flag")
    if cell.uncertain:
        out.append("uncertain")
    return out


def lacks_hint(cell, model_classes) -> list[str]:
    """Classes the case's model cannot name that a cell it called ``cell.predicted`` is often one of (bands for
    segmented neutrophils, myelocytes for promyelocytes...): offered first to the reviewer; empty for a cell the
    gate refused or whose call has no such neighbour."""
    if status(cell) != OK:
        return []
    known = set(model_classes or [])
    return [c for c in OFTEN_MISTAKEN_FOR.get(cell.predicted, ()) if c not in known]


def hint_text(codes: list[str], called: str, *, page: bool = False) -> str:
    """The hint in words: "The model cannot name band neutrophils (NGB) and at times calls them segmented
    neutrophils (NGS): check whether this cell is one." (``page``: said of the cells of a gallery page)."""
    named = " or ".join(f"{cell_name(c).lower()}s ({c})" for c in codes)
    check = ("check these cells for them: tick any and choose the class under Another class" if page
             else "check whether this cell is one")
    return f"The model cannot name {named} and at times calls them {cell_name(called).lower()}s ({called}): {check}."


def review_reasons(cell) -> list[str]:
    """Why the case rules send this (unreviewed, classified) cell to a person; empty when they do not."""
    return [] if cell.final_label is not None else model_flags(cell)


def needs_review(cell) -> bool:
    """Unreviewed and uncertain, critical or hairy-flagged: marked for a person in the gallery and the queue."""
    return bool(review_reasons(cell))


def unresolved(cell) -> bool:
    """A classified cell without a reviewer's label (gate-rejected images are counted apart: ``rejected_open``)."""
    return status(cell) == OK and cell.final_label is None


def rejected_open(cell) -> bool:
    """An image the gate would not judge that no reviewer has yet given a class or dismissed: it blocks sign-off
    (it may be a genuine cell, a blast among them, that the gate found unlike its training crops)."""
    return status(cell) == REJECTED and cell.final_label is None


def dismissed(cell) -> bool:
    """An image a reviewer dismissed as not a cell (only gate-rejected images can be)."""
    return cell.final_label == DISMISSED_CODE


# what the gate knows of an image it refused, as every page says it ("The model would not judge these images: they
# look ...")
REJECTED_WORDS = ("unlike its training crops (a whole field, another magnification, a blurred or blank image, a photo, "
                  "or a genuine cell unlike those it learnt from)")
REJECTED_GROUP_NAME = "Not judged by the gate"


def said_text(cell) -> str:
    """Who said what of a cell, as every caption and table prints it: the model's label with the model's own
    confidence, then the reviewer's label if there is one. The model's confidence is never printed beside a label
    the model did not give. E.g. "model: NIF 0.88 -> reviewer: EBO", "gate: not judged -> reviewer: dismissed"."""
    st = status(cell)
    if st == REJECTED:
        model = "gate: not judged"
    elif st == OK:
        model = f"model: {cell.predicted}" + (f" {cell.confidence:.2f}" if cell.confidence is not None else "")
    else:
        model = "not classified" if st == PENDING else "unreadable"
    if cell.final_label is None:
        return model
    if cell.final_label == DISMISSED_CODE:
        return f"{model} -> reviewer: dismissed, not a cell"
    if st == OK and cell.final_label == cell.predicted:
        return f"{model} -> reviewer: confirmed {cell.final_label}"
    return f"{model} -> reviewer: {cell.final_label}"


def top3(cell) -> list[tuple[str, float]]:
    return sorted((cell.probabilities or {}).items(), key=lambda kv: -kv[1])[:3]


def top3_text(cell) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in top3(cell))


def case_review_rules(case) -> ReviewRules:
    """The review rules ``case`` was classified under (stored with it), whatever the sidebar shows now."""
    return ReviewRules.from_dict(getattr(case, "rules", None))


def hairy_screening(case) -> tuple[bool, str]:
    """(available, what to say): screening is a property of the model that classified the case, never the sidebar's."""
    if HAIRY_CELL_CODE in (case.model_classes or []):
        thr = case_review_rules(case).hairy_flag_at
        return True, (f"Hairy-cell flag at calibrated P(HAC) ≥ {thr:.2f}, set when the case was classified."
                      if thr is not None else "Hairy-cell flags as set when the case was classified.")
    return False, (f"{HAIRY_UNAVAILABLE} for this case: the model that classified it ({case.model_name or 'unknown'}) "
                   "was not trained on hairy cells (HAC), so it cannot flag them. No flag here does not mean no hairy "
                   "cells.")


def review_queue(case) -> list:
    """The cells a reviewer works through, in order: critical, then uncertain, then the other unreviewed cells,
    then images the gate rejected, then cells already reviewed."""
    cells = [c for c in case.cells if status(c) in (OK, REJECTED)]

    def key(c):
        if needs_review(c):
            group = 0 if (critical_codes(c) or c.hairy_flag) else 1
        elif unresolved(c):
            group = 2
        elif status(c) == REJECTED and c.final_label is None:
            group = 3
        else:
            group = 4
        return group, (c.confidence if group < 2 and c.confidence is not None else 0), c.position

    return sorted(cells, key=key)


REJECTED_GROUP = "(rejected)"  # the review gallery's group of gate-rejected images nobody gave a class yet


def gallery_group(cell) -> str | None:
    """The class a cell is shown under in the review gallery: its label (the reviewer's, else the model's); images
    the gate rejected and nobody labelled form their own group; cells not classified or unreadable are in none."""
    st = status(cell)
    if st == OK:
        return cell.label
    if st == REJECTED:
        return cell.final_label or REJECTED_GROUP
    return None


def gallery_order(case) -> list[tuple[str, list]]:
    """The gallery's groups in the order a differential is read: blasts first, then the classes holding cells that
    need a person (most first), then the rest in the model's class order, rejected images last. Within a group:
    cells needing review (least confident first), then the other unreviewed ones, then reviewed ones."""
    from .tasks import BLAST_CODES

    groups: dict[str, list] = {}
    for c in case.cells:
        g = gallery_group(c)
        if g is not None:
            groups.setdefault(g, []).append(c)
    classes = list(case.model_classes or [])

    def group_key(g):
        flagged = sum(needs_review(c) for c in groups[g])
        return (g == REJECTED_GROUP, g not in BLAST_CODES, -flagged,
                classes.index(g) if g in classes else len(classes), g)

    def cell_key(c):
        return (0 if needs_review(c) else 1 if c.final_label is None else 2,
                (c.confidence or 0) if needs_review(c) else 0, c.position)

    return [(g, sorted(groups[g], key=cell_key)) for g in sorted(groups, key=group_key)]


def next_cell_id(queue: list, current_id: int) -> int | None:
    """The cell to show after acting on ``current_id``: the next unresolved one in queue order (wrapping round),
    else None."""
    ids = [c.id for c in queue]
    if current_id not in ids:
        return ids[0] if ids else None
    i = ids.index(current_id)
    order = queue[i + 1:] + queue[:i]
    for c in order:
        if unresolved(c) or (status(c) == REJECTED and c.final_label is None):
            return c.id
    return None


@dataclass
class CaseSummary:
    cells: int          # rows of the case, every uploaded file
    pending: int        # not classified yet
    classified: int     # classified by the model (status ok)
    rejected: int       # refused by the model's gate
    unreadable: int
    uncertain: int      # classified, confidence under the case's threshold (reviewed or not)
    critical: int       # classified, a critical class reached its threshold (reviewed or not)
    hairy_flags: int | None  # None: the case's model has no HAC class
    needs_review: int   # unreviewed cells that only a person may resolve
    unresolved: int     # classified cells without a reviewer's label
    reviewed: int       # classified cells with a reviewer's label
    rejected_open: int = 0       # gate-rejected images nobody has given a class or dismissed yet
    rejected_labelled: int = 0   # ... given a class by a reviewer (they count)
    rejected_dismissed: int = 0  # ... dismissed by a reviewer as not a cell


def summary(case) -> CaseSummary:
    cells = list(case.cells)
    st = [status(c) for c in cells]
    ok = [c for c, s in zip(cells, st) if s == OK]
    has_hac = HAIRY_CELL_CODE in (case.model_classes or [])
    return CaseSummary(
        cells=len(cells), pending=st.count(PENDING), classified=len(ok), rejected=st.count(REJECTED),
        unreadable=st.count(UNREADABLE), uncertain=sum(bool(c.uncertain) for c in ok),
        critical=sum(bool(critical_codes(c)) for c in ok),
        hairy_flags=sum(bool(c.hairy_flag) for c in ok) if has_hac else None,
        needs_review=sum(needs_review(c) for c in ok), unresolved=sum(unresolved(c) for c in ok),
        reviewed=sum(c.final_label is not None for c in ok),
        rejected_open=sum(map(rejected_open, cells)),
        rejected_labelled=sum(s == REJECTED and c.final_label not in (None, DISMISSED_CODE) for c, s in zip(cells, st)),
        rejected_dismissed=sum(s == REJECTED and dismissed(c) for c, s in zip(cells, st)))


def rejected_text(s: CaseSummary) -> str:
    """What became of the images the gate would not judge, as pages and reports say it."""
    if not s.rejected:
        return "The gate refused no image."
    return (f"The gate would not judge {s.rejected} image(s): {s.rejected_labelled} given a class by a reviewer "
            f"(counted), {s.rejected_dismissed} dismissed as not a cell, {s.rejected_open} not reviewed yet.")


def sign_off_blockers(case) -> list[str]:
    """Why the case cannot be signed off yet, in words; empty when it can."""
    out = []
    pend = [c for c in case.cells if status(c) == PENDING]
    if pend:
        out.append(f"{len(pend)} cell(s) are not classified yet (classification is running or was interrupted)")
    flagged = [c for c in case.cells if needs_review(c)]
    if flagged:
        c = flagged[0]
        out.append(f"{len(flagged)} uncertain or flagged cell(s) are unresolved (e.g. #{c.position + 1} {c.name}: "
                   f"{', '.join(review_reasons(c))}); review them before signing off")
    rest = [c for c in case.cells if unresolved(c) and not needs_review(c)]
    if rest:
        out.append(f"{len(rest)} cell(s) are not reviewed yet (e.g. #{rest[0].position + 1} {rest[0].name})")
    rej = [c for c in case.cells if rejected_open(c)]
    if rej:
        out.append(f"{len(rej)} image(s) the model's gate would not judge are unresolved (e.g. #{rej[0].position + 1} "
                   f"{rej[0].name}): give each a class, or dismiss it as not a cell")
    return out
