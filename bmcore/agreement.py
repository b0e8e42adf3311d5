"""Agreement on signed cases: the model's label against the label a pathologist signed, over the lab's own work.

Only signed-off cases count, and never a demo case (``Case.demo``). One row per counted cell of each such case
(``signed_cells``): readable, classified, not dismissed as "not a cell". The model's label is its top class, or
``REFUSED`` where its gate would not judge the image; the signed label is the reviewer's, or the model's where the
signer let it stand. ``agreement`` turns the rows into every figure the Agreement page and ``python -m bmcore
agreement`` show: overall and per class (precision and recall by scikit-learn), the confusion matrix, by month and
by model (name + weights sha256), the share of auto-accepted cells (nothing flagged them for a person) that a
reviewer changed, and the signed cells of classes the model cannot name.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from .caserules import OK, REJECTED, model_flags, status
from .metrics import wilson_interval
from .schema import STATUS_SIGNED, Case, Cell
from .tasks import DISMISSED_CODE

REFUSED = "(refused)"  # the model's "label" of an image its gate would not judge


@dataclass(frozen=True)
class SignedCell:
    case: str
    month: str              # of the sign-off, YYYY-MM (UTC)
    model: str              # bundle name
    model_sha256: str
    model_classes: tuple
    predicted: str          # the model's top class, or REFUSED
    final: str              # the signed label
    auto_accepted: bool     # classified, and nothing sent it to a person
    reviewed: bool          # a reviewer gave the signed label (else the signer let the model's stand)


def counted_signed_cells(s, demos: list | None = None):
    """(case, cell, status) of every counted cell of the signed cases that are not demos, in sign-off order: a cell
    the model classified or its gate refused, with a signed label that is a class (never an unreadable, dismissed
    or unlabelled image). What the agreement figures and the teaching quizzes (``bmcore.quiz``) are built from.
    ``demos``: a list each signed demo case left out is appended to."""
    # the cells' thumbnails stay in the database unless a caller reads one (a quiz's chosen cells)
    q = select(Case).where(Case.status == STATUS_SIGNED).order_by(Case.signed_at) \
        .options(selectinload(Case.cells).defer(Cell.thumbnail))
    for case in s.scalars(q):
        if case.demo:
            if demos is not None:
                demos.append(case.id)
            continue
        for c in case.cells:
            st = status(c)
            if st in (OK, REJECTED) and c.label and c.label != DISMISSED_CODE:
                yield case, c, st


def signed_cells(store, actor=None) -> tuple[list[SignedCell], int]:
    """(rows of every counted cell of the signed cases that are not demos, how many signed demo cases were left
    out). ``actor``: the signed-in user asking (a page: the store checks the role); None for the server's own
    command line."""
    rows, demos = [], []
    with store.session() as s:
        if actor is not None:
            store._authorize(s, actor, "agreement")
        for case, c, st in counted_signed_cells(s, demos):
            month = f"{case.signed_at:%Y-%m}" if case.signed_at else "unknown"
            rows.append(SignedCell(case.case_code, month, case.model_name, case.model_sha256 or "",
                                   tuple(case.model_classes or []), REFUSED if st == REJECTED else c.predicted,
                                   c.label, st == OK and not model_flags(c), c.final_label is not None))
    return rows, len(demos)


@dataclass
class Agreement:
    cells: int
    agree: int
    cases: int
    demo_cases_left_out: int
    per_class: list[dict] = field(default_factory=list)    # class, signed, model_said, precision, recall, f1
    confusion: dict = field(default_factory=dict)          # {signed label: {model label: cells}}
    by_month: list[dict] = field(default_factory=list)     # month, cells, agree, share
    by_model: list[dict] = field(default_factory=list)     # model, sha256, cells, agree, share
    auto_accepted: int = 0
    auto_changed: int = 0
    refused: int = 0
    unknown_to_model: dict = field(default_factory=dict)   # {class: signed cells}: classes the model cannot name

    @property
    def share(self) -> float | None:
        return self.agree / self.cells if self.cells else None

    def share_text(self) -> str:
        if not self.cells:
            return "no signed cells yet"
        lo, hi = wilson_interval(self.agree, self.cells)
        return (f"{self.agree} of {self.cells} signed cells ({100 * self.agree / self.cells:.1f}%, 95% CI "
                f"{100 * lo:.1f}-{100 * hi:.1f}%) over {self.cases} signed case(s)")

    def unknown_text(self) -> list[str]:
        return [f"{k}: {n} signed cell{'s' if n != 1 else ''}; the model cannot name them"
                for k, n in sorted(self.unknown_to_model.items(), key=lambda kv: -kv[1])]


def _share_rows(rows: list[SignedCell], key, names: tuple[str, ...]) -> list[dict]:
    """Cells and agreement per group of ``key(row)`` (a tuple, its parts named ``names``)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for g, rs in sorted(groups.items()):
        agree = sum(r.predicted == r.final for r in rs)
        out.append({**dict(zip(names, g)), "cells": len(rs), "agree": agree, "share": agree / len(rs)})
    return out


def agreement(rows: list[SignedCell], demo_cases_left_out: int = 0) -> Agreement:
    """Every agreement figure of ``rows`` (``signed_cells``)."""
    from sklearn.metrics import precision_recall_fscore_support

    a = Agreement(len(rows), sum(r.predicted == r.final for r in rows), len({r.case for r in rows}),
                  demo_cases_left_out)
    if not rows:
        return a
    finals = [r.final for r in rows]
    preds = [r.predicted for r in rows]
    labels = sorted(set(finals) | (set(preds) - {REFUSED}))
    p, rc, f1, _ = precision_recall_fscore_support(finals, preds, labels=labels, zero_division=0)
    n_final, n_pred = Counter(finals), Counter(preds)
    a.per_class = [{"class": k, "signed": n_final[k], "model_said": n_pred[k], "precision": float(p[i]),
                    "recall": float(rc[i]), "f1": float(f1[i])} for i, k in enumerate(labels)]
    for r in rows:
        a.confusion.setdefault(r.final, Counter())[r.predicted] += 1
    a.confusion = {k: dict(v) for k, v in sorted(a.confusion.items())}
    a.by_month = _share_rows(rows, lambda r: (r.month,), ("month",))
    a.by_model = _share_rows(rows, lambda r: (r.model, r.model_sha256), ("model", "sha256"))
    auto = [r for r in rows if r.auto_accepted]
    a.auto_accepted, a.auto_changed = len(auto), sum(r.final != r.predicted for r in auto)
    a.refused = n_pred[REFUSED]
    a.unknown_to_model = dict(Counter(r.final for r in rows if r.model_classes and r.final not in r.model_classes))
    return a


def lab_agreement(store, actor=None) -> Agreement:
    """``agreement`` over the store's signed cases that are the lab's own (no demo case)."""
    rows, demos = signed_cells(store, actor)
    return agreement(rows, demos)


def agreement_text(a: Agreement) -> str:
    """The figures as the command line prints them."""
    from .tasks import cell_name

    lines = ["For research use only. Not for use in diagnostic procedures.",
             "Agreement of the model with the signed labels (signed cases of this store; demo cases never count"
             + (f": {a.demo_cases_left_out} left out" if a.demo_cases_left_out else "") + ")",
             "overall: " + a.share_text()]
    if not a.cells:
        return "\n".join(lines)
    lines.append(f"auto-accepted cells a reviewer changed: {a.auto_changed} of {a.auto_accepted}"
                 + (f" ({100 * a.auto_changed / a.auto_accepted:.1f}%)" if a.auto_accepted else ""))
    lines.append(f"refused by the gate, then given a class by a reviewer: {a.refused}")
    lines += ["classes the model cannot name:"] + [f"  {t}" for t in a.unknown_text()] if a.unknown_to_model else []
    lines.append("per class (signed label vs the model's): class, signed, model said, precision, recall, F1")
    lines += [f"  {r['class']} ({cell_name(r['class'])})\t{r['signed']}\t{r['model_said']}\t{r['precision']:.3f}\t"
              f"{r['recall']:.3f}\t{r['f1']:.3f}" for r in a.per_class]
    lines.append("by month: " + "; ".join(f"{m['month']} {m['agree']}/{m['cells']}" for m in a.by_month))
    lines.append("by model: " + "; ".join(f"{m['model']} (weights {m['sha256'][:8]}) {m['agree']}/{m['cells']}"
                                          for m in a.by_model))
    return "\n".join(lines)
