"""Governed model updates: a candidate learnt from the lab's cells becomes the model of new cases only when it meets
acceptance criteria fixed before it was learnt and an admin approves it with their password; any earlier approved
model (or the shipped default) can be restored; every step is in ``model_events`` with who and when.

In the spirit of FDA's guidance on a Predetermined Change Control Plan for AI-enabled device software: the
modification protocol (``train.learn``) and the acceptance criteria (``DEFAULT_CRITERIA``, or the file given) are
written before training; the impact (current against candidate, on the lab's held-out cases and the reference test
split) is measured and kept (``report.json``); each update is traceable (the bundle's lineage, the events).

- A candidate is registered from its folder (``bundle/`` + ``report.json``); the store keeps its weights' sha256,
  and approval refuses a bundle whose weights changed since, or whose figures fail any criterion (recomputed here
  from the report's figures, not read from its "passed").
- Approving or restoring names the model the admin's page showed as in force (``expected_active``): a colleague's
  approval in between is a conflict, never overwritten.
- The approved bundle is copied under ``approved_dir`` (the shipped default under ``assets/models`` is never
  written); cases keep the model they were classified with (``Case.model_sha256``), so only new cases change.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

from sqlalchemy import JSON, DateTime, Integer, String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from .db import NO_REUSE, Base, ConflictError, PermissionDenied, StoreError, utcnow

DEFAULT_CRITERIA = {
    "lab_macro_f1_not_lower": True,       # the candidate's lab-test macro-F1 at least the current model's
    "max_class_f1_drop": 0.02,            # no class's lab-test F1 lower than the current model's by more
    "max_reference_macro_f1_drop": 0.01,  # the reference test split, where it can be measured
    "max_lab_refusal": 0.05,              # the gate's refusal of the lab's genuine test cells
}
SHIPPED = "shipped default"


class ModelEvent(Base):
    """One step of a model update: a candidate registered, approved, restored, a learning job started or ended."""

    __tablename__ = "model_events"
    __table_args__ = (NO_REUSE,)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    who: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    action: Mapped[str] = mapped_column(String(30))   # registered | approved | restored | learn-*
    name: Mapped[str] = mapped_column(String(200), default="")
    sha256: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(Text, default="")  # the bundle folder ("" for the shipped default)
    detail: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # criteria, figures, failures, proof
    # a learning job's end (finished, failed or cancelled): its folder, unique, so that two pages (two admins, two
    # replicas) that see the job end at the same moment record it, and register its candidate, once
    ends_job: Mapped[str | None] = mapped_column(String(500), nullable=True, unique=True)


def check(criteria: dict, current: dict, candidate: dict) -> list[str]:
    """Every criterion the candidate fails, in words (empty: it passes). ``current`` / ``candidate``: the report's
    figures of each model ({"lab_test": ..., "reference_test": ...})."""
    fails = []
    lab_c, lab_n = current["lab_test"], candidate["lab_test"]
    if criteria.get("lab_macro_f1_not_lower", True) and lab_n["macro_f1"] < lab_c["macro_f1"]:
        fails.append(f"lab-test macro-F1 {lab_n['macro_f1']:.3f} is lower than the current model's "
                     f"{lab_c['macro_f1']:.3f}")
    drop = criteria.get("max_class_f1_drop", 0.02)
    for k, v in lab_c["per_class_f1"].items():
        if lab_n["per_class_f1"].get(k, 0.0) < v - drop:
            fails.append(f"{k}: lab-test F1 {lab_n['per_class_f1'].get(k, 0.0):.3f} against the current model's "
                         f"{v:.3f} (more than {drop} lower)")
    ref_c, ref_n = current.get("reference_test"), candidate.get("reference_test")
    ref_drop = criteria.get("max_reference_macro_f1_drop", 0.01)
    if ref_c and ref_n and ref_n["macro_f1"] < ref_c["macro_f1"] - ref_drop:
        fails.append(f"reference test macro-F1 {ref_n['macro_f1']:.3f} against {ref_c['macro_f1']:.3f} (more than "
                     f"{ref_drop} lower)")
    limit = criteria.get("max_lab_refusal", 0.05)
    if lab_n["refusal"] is not None and lab_n["refusal"] > limit:
        fails.append(f"the gate refuses {lab_n['refusal']:.1%} of the lab's test cells (more than {limit:.0%})")
    return fails


def criteria_text(criteria: dict) -> str:
    """The acceptance criteria in words."""
    out = []
    if criteria.get("lab_macro_f1_not_lower", True):
        out.append("lab-test macro-F1 not lower than the current model's")
    if "max_class_f1_drop" in criteria:
        out.append(f"no class's lab-test F1 lower by more than {criteria['max_class_f1_drop']}")
    if "max_reference_macro_f1_drop" in criteria:
        out.append(f"reference test macro-F1 not lower by more than {criteria['max_reference_macro_f1_drop']}")
    if "max_lab_refusal" in criteria:
        out.append(f"the gate refuses at most {criteria['max_lab_refusal']:.0%} of the lab's test cells")
    return "; ".join(out)


def _candidate_event(folder: Path, who: str) -> ModelEvent:
    """The ``registered`` event of the candidate in ``folder`` (``bundle`` + ``report.json``), criteria checked."""
    from .bundle import load_bundle

    b = load_bundle(folder / "bundle")
    report = json.loads((folder / "report.json").read_text())
    fails = check(report["criteria"], report["figures"]["current"], report["figures"]["candidate"])
    return ModelEvent(who=who, action="registered", name=b.name, sha256=b.sha256, path=str(b.path),
                      detail={"criteria": report["criteria"], "figures": report["figures"], "failures": fails,
                              "report": str(folder / "report.json"), "base": report["figures"]["current"]})


def _event_dict(e: ModelEvent) -> dict:
    return {"id": e.id, "at": e.at, "who": e.who, "action": e.action, "name": e.name, "sha256": e.sha256,
            "path": e.path, "detail": e.detail or {}}


class GovernanceMixin:
    """Model updates on the store (mixed into ``bmcore.cases.CaseStore``)."""

    def model_events(self) -> list[dict]:
        with self.session() as s:
            return [_event_dict(e) for e in s.scalars(select(ModelEvent).order_by(ModelEvent.id))]

    def active_model(self) -> dict | None:
        """The model new cases are classified with, as the last approval or restore set it; None: the shipped
        default (never changed)."""
        with self.session() as s:
            e = s.scalars(select(ModelEvent).where(ModelEvent.action.in_(("approved", "restored")))
                          .order_by(ModelEvent.id.desc()).limit(1)).first()
            return None if e is None or not e.path else _event_dict(e)

    def active_event_id(self) -> int:
        """The id of the approval or restore in force (0: none yet), what a page sends back as ``expected_active``."""
        with self.session() as s:
            return s.scalar(select(ModelEvent.id).where(ModelEvent.action.in_(("approved", "restored")))
                            .order_by(ModelEvent.id.desc()).limit(1)) or 0

    def candidates(self) -> list[dict]:
        """Registered candidates, newest first, each with its report's figures and what it fails now."""
        with self.session() as s:
            rows = [_event_dict(e) for e in s.scalars(select(ModelEvent).where(ModelEvent.action == "registered")
                                                      .order_by(ModelEvent.id.desc()))]
            approved = set(s.scalars(select(ModelEvent.sha256).where(ModelEvent.action == "approved")))
        for r in rows:
            r["approved_before"] = r["sha256"] in approved
        return rows

    def register_candidate(self, folder: str | Path, who: str = "(learning job)") -> int:
        """Record a learnt candidate (``folder/bundle`` + ``folder/report.json``); returns the event id."""
        e = _candidate_event(Path(folder), who)
        with self.session() as s:
            s.add(e)
            s.flush()
            return e.id

    def end_learning(self, folder: str | Path, action: str, who: str = "(learning job)", *, user_id: int | None = None,
                     name: str = "", detail: dict | None = None, register: bool = False) -> int | None:
        """Record a learning job's end (``learn-finished``, ``-failed`` or ``-cancelled``) and, with ``register``,
        its candidate, in one transaction and at most once per job folder. Returns the candidate's event id (0
        without ``register``), or None when another page or replica recorded this job's end first."""
        folder = Path(folder)
        cand = _candidate_event(folder, "(learning job)") if register else None
        try:
            with self.session() as s:
                if cand is not None:
                    s.add(cand)
                    s.flush()
                s.add(ModelEvent(who=who, user_id=user_id, action=action, name=name, ends_job=str(folder),
                                 detail={"folder": str(folder), **(detail or {}),
                                         **({"candidate_event": cand.id} if cand is not None else {})}))
        except IntegrityError:
            return None
        return cand.id if cand is not None else 0

    def _govern(self, s, actor, password: str | None, expected_active: int):
        """The admin doing it (role as stored now), their password again, and the model in force as their page showed
        it; returns the user row."""
        u = self._authorize(s, actor, "models")
        self._signature_proof(actor, password)
        now = s.scalar(select(ModelEvent.id).where(ModelEvent.action.in_(("approved", "restored")))
                       .order_by(ModelEvent.id.desc()).limit(1)) or 0
        if now != expected_active:
            last = s.get(ModelEvent, now)
            raise ConflictError(f"{last.who} {last.action} {last.name or SHIPPED} at {last.at:%H:%M:%S} UTC after "
                                "your page was drawn; nothing was changed. Look at the page again")
        return u

    def approve(self, event_id: int, actor, *, password: str | None, expected_active: int,
                approved_dir: str | Path) -> dict:
        """Make registered candidate ``event_id`` the model of new cases: admins only, with their password; refused
        if it fails a criterion or its weights changed since it was registered. The bundle is copied under
        ``approved_dir``; returns the approval event."""
        from .bundle import BundleError, load_bundle

        with self.session() as s:
            cand = s.get(ModelEvent, event_id)
            if cand is None or cand.action != "registered":
                raise StoreError("no such candidate")
        fails = check(cand.detail["criteria"], cand.detail["figures"]["current"], cand.detail["figures"]["candidate"])
        if fails:
            raise PermissionDenied("this candidate fails its acceptance criteria and cannot be approved: "
                                   + "; ".join(fails))
        try:
            b = load_bundle(cand.path)
        except BundleError as exc:
            raise StoreError(f"the candidate's bundle cannot be read: {exc}") from None
        if b.sha256 != cand.sha256:
            raise PermissionDenied("the candidate's weights changed since it was registered; it cannot be approved")
        dest = Path(approved_dir) / f"{b.name}-{b.sha256[:8]}"
        with self.session() as s:
            u = self._govern(s, actor, password, expected_active)
            if not dest.exists():
                shutil.copytree(b.path, dest)
            e = ModelEvent(who=u.username, user_id=u.id, action="approved", name=b.name, sha256=b.sha256,
                           path=str(dest), detail={"candidate_event": event_id, "figures": cand.detail["figures"],
                                                   "criteria": cand.detail["criteria"],
                                                   "proof": "password re-entered"})
            s.add(e)
            s.flush()
            return _event_dict(e)

    def restore(self, actor, *, password: str | None, expected_active: int, approval_id: int | None = None) -> dict:
        """Make an earlier approved model (``approval_id``; None: the shipped default) the model of new cases again."""
        with self.session() as s:
            u = self._govern(s, actor, password, expected_active)
            if approval_id is None:
                e = ModelEvent(who=u.username, user_id=u.id, action="restored", name=SHIPPED, path="")
            else:
                prev = s.get(ModelEvent, approval_id)
                if prev is None or prev.action != "approved":
                    raise StoreError("only an approved model can be restored")
                e = ModelEvent(who=u.username, user_id=u.id, action="restored", name=prev.name, sha256=prev.sha256,
                               path=prev.path, detail={"approval": approval_id})
            s.add(e)
            s.flush()
            return _event_dict(e)

    def log_model_event(self, action: str, who: str, *, user_id: int | None = None, name: str = "",
                        detail: dict | None = None) -> None:
        """A learning job's start, end, cancellation or refusal."""
        with self.session() as s:
            s.add(ModelEvent(who=who, user_id=user_id, action=action, name=name, detail=detail))
