"""Cases, cells, reviews and sign-off: the store's versioned writes and its reads, through SQLAlchemy.

An SQLite file by default; any SQLAlchemy URL (``postgresql+psycopg://...``) for a shared lab server. The tables
and their migration are ``bmcore.schema``; the job rows ``bmcore.jobtable``; the integrity check
``bmcore.integrity``; a case's facts in words ``bmcore.casetext``.

Every change to a cell or case appends an ``AuditEvent`` (who, when, cell, from, to); audit
rows are never updated or deleted by this module. Cell and case rows carry a ``version``
column used for optimistic locking: a reviewer who edits a cell that someone else changed
since they loaded it gets ``ConflictError`` instead of silently overwriting it; so does one
who loses a race with a concurrent writer between the check and the write (the UPDATE's
``WHERE version = ?`` finds nothing), never a raw SQLAlchemy error. Signing a case off bumps
every cell's version too, so a review racing a sign-off (either way round) is a conflict, not a
change to a signed case.
"""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import flag_modified
from sqlalchemy.orm.exc import StaleDataError

from .auth import AccountsMixin, Actor, AuthPolicy
from .casetext import case_status_text, ranges_text, signature_text, who_text
from .db import AuthError, CaseError, ConflictError, PermissionDenied, StoreError, utcnow
from .governance import GovernanceMixin
from .quiz import QuizMixin
from .integrity import integrity_problems
from .jobtable import JobTable
from .schema import (CODE_MAX, NAME_MAX, SPECIMEN_FIELDS, SPECIMEN_MAX, STATUS_OPEN, STATUS_SIGNED, TARGET_MAX,
                     TARGET_MIN, VIA_GALLERY, VIA_ONE, WHO_SYSTEM, WHO_USER, AuditEvent, Case, Cell, FieldImage, Job,
                     open_engine)
from .tasks import DISMISSED_CODE, reviewer_labels
from .text import has_hidden_characters

DEFAULT_DB = Path("data") / "bmcases.db"


def _changed_by_other(cell: Cell) -> str:
    who = cell.reviewed_by or "someone else"
    when = f" at {cell.reviewed_at:%H:%M:%S} UTC" if cell.reviewed_at else ""
    return (f"#{cell.position + 1} {cell.name} was changed by {who}{when} while you were looking at it (now "
            f"{cell.label or 'unlabelled'}); reload it and try again")


def _cells_named(cells: list) -> str:
    shown = ", ".join(f"#{c.position + 1} {c.name}" + (f" (now {c.final_label} by {c.reviewed_by})" if c.final_label
                                                       else "") for c in cells[:5])
    return shown + (f" and {len(cells) - 5} more" if len(cells) > 5 else "")


@dataclass
class ReviewResult:
    """What a review action did: its id (None when it changed nothing), {cell id: new version} of the cells it
    changed, and the cells it left alone, each with the reason in words."""

    action_id: str | None
    changed: dict
    skipped: list
    unchanged: int = 0

    def message(self, verb: str) -> str:
        out = f"{len(self.changed)} cell(s) {verb}."
        if self.unchanged:
            out += f" {self.unchanged} already had that label."
        if self.skipped:
            shown = "; ".join(why for _, why in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            out += f" Not changed: {len(self.skipped)} ({shown}{more})."
        return out


@dataclass
class CellInput:
    """What the Classify page hands to the store for one cell."""

    name: str
    ok: bool
    error: str = ""
    sha256: str = ""
    thumbnail: bytes | None = None
    predicted: str = ""
    confidence: float | None = None
    probabilities: dict | None = None
    uncertain: bool = False
    hairy_flag: bool = False
    rejected: bool = False
    reject_reason: str = ""
    critical: str = ""
    origin: dict | None = None  # a cell found in a smear field: its source field and box (Cell.origin)
    pending: bool = False


class CaseStore(JobTable, GovernanceMixin, QuizMixin, AccountsMixin):
    def __init__(self, url: str | None = None, *, policy: AuthPolicy | None = None):
        self.policy = policy or AuthPolicy.from_env()
        if url is None:
            DEFAULT_DB.parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{DEFAULT_DB}"
        elif "://" not in url:  # a plain file path
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{url}"
        self.url = url
        self.engine = open_engine(url)
        self._Session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self):
        s: Session = self._Session()
        try:
            yield s
            s.commit()
        except DBAPIError as exc:
            s.rollback()
            if isinstance(exc, IntegrityError):
                raise
            # a value the database refuses (e.g. too long for its column on PostgreSQL) or a lost server: a
            # readable refusal for the page, never a raw driver error
            kind = type(exc.orig or exc).__name__
            raise StoreError(f"the case database did not save this ({kind}); nothing was changed") from exc
        except Exception:
            s.rollback()
            raise
        finally:
            s.close()

    # -- cases ---------------------------------------------------------------------------------------
    def create_case(self, case_code: str, cells: list[CellInput], *, actor: Actor, model_name: str = "",
                    model_sha256: str = "", model_classes: list[str] | None = None, rules: dict | None = None,
                    inference: dict | None = None, field_images: list[dict] | None = None, demo: bool = False) -> int:
        """Create a case with all its cells in one transaction (all or nothing). ``demo``: the demo case's example
        images (``bmcore.demo``), marked so everywhere and never counted in the lab's figures.

        ``field_images``: the smear fields the cells were found in, ``{"name", "width", "height", "image" (JPEG
        bytes), "scale"}`` each (``bmcore.fields.field_record``).

        Cells marked ``pending`` are placeholders a classification job fills in (``save_results``). A file
        name longer than the column is stored truncated; the full name goes into the audit trail.
        """
        code = case_code.strip()
        if not code:
            raise CaseError("a case id is required")
        if has_hidden_characters(code):
            raise CaseError("a case id cannot hold control, tab, line-break or direction-changing characters (such as "
                            "U+202E); retype it")
        if len(code) > CODE_MAX:
            raise CaseError(f"a case id has at most {CODE_MAX} characters (this one has {len(code)})")
        try:
            with self.session() as s:
                u = self._authorize(s, actor, "classify")
                if s.scalar(select(Case.id).where(Case.case_code == code)) is not None:
                    raise CaseError(f"case {code!r} already exists; open it on the Review page or choose another id")
                case = Case(case_code=code, created_by=u.username, created_by_id=u.id, model_name=model_name[:200], model_sha256=model_sha256,
                            model_classes=list(model_classes or []), rules=rules, inference=inference, demo=demo)
                long_names = []
                for i, c in enumerate(cells):
                    if len(c.name) > NAME_MAX:
                        long_names.append((i, c.name))
                    case.cells.append(_cell_row(i, c))
                s.add(case)
                s.flush()
                s.add_all(_field_row(case.id, f) for f in field_images or [])
                s.add(_audit_row(case.id, u, action="create", n_cells=len(cells),
                                 note=f"{len(cells)} cells; model {model_name}" + ("; demo case" if demo else "")))
                for i, full in long_names:
                    cell = case.cells[i]
                    s.add(_audit_row(case.id, u, cell=cell, action="name-truncated", note=f"full file name: {full}"))
                return case.id
        except IntegrityError:  # the same id created by someone else at the same moment
            raise CaseError(f"case {code!r} already exists; open it on the Review page or choose another id") from None

    def add_cells(self, case_id: int, cells: list[CellInput], *, actor: Actor, expected_cells: int,
                  field_images: list[dict] | None = None) -> list[int]:
        """Append cells (more smear fields of the same smear, or more crops) to an open case, in one transaction;
        returns their positions. Pending cells are filled by a classification job with the case's own model.

        ``expected_cells`` is how many cells the adder's page showed: if the case has gained or lost cells since
        (a colleague added a field at the same time), nothing is added and ``ConflictError`` says so. A signed-off
        case takes no cells; a field already in the case (by name) is refused, not counted twice.
        """
        if not cells:
            raise CaseError("nothing to add: the upload holds no image file")
        try:
            with self.session() as s:
                u = self._authorize(s, actor, "classify")
                case = self._case(s, case_id)
                if case.status == STATUS_SIGNED:
                    raise CaseError(f"case {case.case_code!r} is signed off; reopen it before adding cells")
                n = s.scalar(select(func.count()).select_from(Cell).where(Cell.case_id == case_id)) or 0
                if n != expected_cells:
                    raise ConflictError(f"case {case.case_code!r} now has {n} cells, not the {expected_cells} your page "
                                        "showed (someone added cells meanwhile); nothing was added. Look at the case "
                                        "again, then add your files")
                have = set(s.scalars(select(FieldImage.name).where(FieldImage.case_id == case_id)))
                dup = [f["name"] for f in field_images or [] if _short_name(f["name"]) in have]
                if dup:
                    raise CaseError(f"field(s) already in case {case.case_code!r}: {', '.join(dup[:5])}; nothing "
                                    "was added (a field counted twice would count its cells twice)")
                last = s.scalar(select(func.max(Cell.position)).where(Cell.case_id == case_id))
                start = 0 if last is None else last + 1
                positions = list(range(start, start + len(cells)))
                s.add_all(_cell_row(pos, c, case_id) for pos, c in zip(positions, cells))
                s.add_all(_field_row(case_id, f) for f in field_images or [])
                fields = f"; from field(s) {', '.join(f['name'] for f in field_images)}" if field_images else ""
                s.add(_audit_row(case_id, u, action="add-cells", n_cells=len(cells),
                                 note=f"{len(cells)} cells: {ranges_text([p + 1 for p in positions])}{fields}"))
                return positions
        except IntegrityError:  # a colleague's cells took these positions (or that field) in the same moment
            raise ConflictError("someone added cells to this case at the same moment; nothing was added. Look at "
                                "the case again, then add your files") from None

    def save_results(self, case_id: int, results: dict[int, CellInput], *, job_id: int | None = None) -> int:
        """Fill in pending cells (by position) with their classification, in one transaction; returns how many.

        A cell that is no longer pending is left alone, so a batch saved twice (a resumed job) changes nothing.
        """
        with self.session() as s:
            self._case(s, case_id)
            # only this batch's rows: a 5,000-cell case is not re-read for every chunk
            by_pos = {c.position: c for c in s.scalars(select(Cell).where(Cell.case_id == case_id,
                                                                           Cell.position.in_(list(results))))}
            filled = []
            for pos, r in sorted(results.items()):
                cell = by_pos.get(pos)
                if cell is None or not cell.pending or (r.sha256 and cell.sha256 and r.sha256 != cell.sha256):
                    continue  # filled already, or not the crop this cell was created for
                cell.pending = False
                cell.ok, cell.error, cell.thumbnail = r.ok, r.error, r.thumbnail
                cell.sha256 = r.sha256 or cell.sha256
                cell.predicted, cell.confidence, cell.probabilities = r.predicted, r.confidence, r.probabilities or {}
                cell.uncertain, cell.hairy_flag, cell.critical = r.uncertain, r.hairy_flag, r.critical
                cell.rejected, cell.reject_reason = r.rejected, r.reject_reason
                filled.append(pos + 1)
            if job_id is not None:
                job = s.get(Job, job_id)
                if job is not None:
                    job.done = (job.done or 0) + len(filled)
                    job.heartbeat = utcnow()
            if filled:
                s.add(AuditEvent(case_id=case_id, who="(classifier)", who_kind=WHO_SYSTEM, action="classified",
                                 note=f"{len(filled)} cells: {ranges_text(filled)}" + (f"; job {job_id}" if job_id else "")))
            return len(filled)

    @staticmethod
    def _case(s: Session, case_id: int) -> Case:
        case = s.get(Case, case_id)
        if case is None:
            raise CaseError(f"no case with id {case_id}")
        return case

    def case_id(self, case_code: str) -> int | None:
        with self.session() as s:
            return s.scalar(select(Case.id).where(Case.case_code == case_code.strip()))

    def _may_read(self, s: Session, actor: Actor | None) -> None:
        """A page reads cases as its signed-in user: the role must allow reading them (a student's does not). None:
        the server's own code (jobs, the command line)."""
        if actor is not None:
            self._authorize(s, actor, "view")

    def get_case(self, case_id: int, actor: Actor | None = None) -> Case:
        with self.session() as s:
            self._may_read(s, actor)
            case = self._case(s, case_id)
            _ = list(case.cells)  # load while the session is open
            s.expunge_all()
            return case

    def field_images(self, case_id: int, actor: Actor | None = None) -> list[dict]:
        """The smear fields of a case (``create_case(field_images=...)``), in the order they were stored."""
        with self.session() as s:
            self._may_read(s, actor)
            return [{"name": f.name, "width": f.width, "height": f.height, "image": f.image, "scale": f.scale}
                    for f in s.scalars(select(FieldImage).where(FieldImage.case_id == case_id).order_by(FieldImage.id))]

    def list_cases(self, actor: Actor | None = None) -> list[dict]:
        from .caserules import needs_review

        with self.session() as s:
            self._may_read(s, actor)
            rows = []
            last = dict(s.execute(select(Job.case_id, Job.status).where(
                Job.id.in_(select(func.max(Job.id)).group_by(Job.case_id)))).all())
            for case in s.scalars(select(Case).order_by(Case.created_at.desc())):
                cells = list(case.cells)
                pending = sum(c.pending for c in cells)
                rows.append({"id": case.id, "case": case.case_code,
                             "status": case_status_text(case.status, pending, len(cells), last.get(case.id)),
                             "short": case_status_text(case.status, pending, len(cells), last.get(case.id),
                                                       short=True),
                             "created": case.created_at, "cells": sum(c.ok and not c.pending for c in cells),
                             "unreadable": sum(not c.ok for c in cells),
                             "reviewed": sum(c.reviewed for c in cells if c.ok),
                             "to_review": sum(needs_review(c) for c in cells),
                             "pending": pending, "model": case.model_name, "demo": bool(case.demo),
                             "signed_by": case.signed_by or "", "signed_at": case.signed_at})
            return rows

    def delete_case(self, case_id: int, actor: Actor) -> None:
        """Delete a case, its cells and its audit trail (docs/reports.md explains when to do this).

        Admins only, except that whoever created a case may take it back while none of its cells is classified or
        reviewed yet (a submission that failed). The deletion itself is logged in ``login_events`` (who, which
        case, how many cells), which outlives the case."""
        try:
            with self.session() as s:
                case = self._case(s, case_id)
                if _untouched_by(case, actor):  # its creator taking back a case nothing was done to yet
                    u = self._authorize(s, actor, "classify")
                else:
                    u = self._authorize(s, actor, "delete")
                self._event(s, u.username, "case-deleted", u.id, f"case {case.case_code!r} (id {case.id}), "
                            f"{len(case.cells)} cells, status {case.status}")
                for ev in s.scalars(select(AuditEvent).where(AuditEvent.case_id == case_id)):
                    s.delete(ev)
                for job in s.scalars(select(Job).where(Job.case_id == case_id)):
                    s.delete(job)
                s.delete(case)
        except (StaleDataError, IntegrityError):
            raise ConflictError("the case changed while it was being deleted (a review or a classification landed); "
                                "nothing was deleted; try again") from None

    # -- reviews -------------------------------------------------------------------------------------
    def review_cell(self, cell_id: int, actor: Actor, label: str, *, expected_version: int | None = None,
                    note: str = "", case_id: int | None = None) -> int:
        """Confirm (label == prediction) or reclassify a cell; returns the cell's new version.

        ``expected_version`` is the version the reviewer saw: if the cell changed since, nothing is saved and
        ``ConflictError`` says who changed it and to what.
        """
        try:
            with self.session() as s:
                u = self._authorize(s, actor, "review")
                cell = s.get(Cell, cell_id)
                if cell is None or (case_id is not None and cell.case_id != case_id):
                    raise CaseError("this cell no longer exists (its case was deleted); reload the page")
                if cell.pending:
                    raise CaseError(f"{cell.name} is not classified yet; wait for the classification to finish")
                if not cell.ok:
                    raise CaseError(f"{cell.name} could not be read; there is nothing to review")
                if cell.case.status == STATUS_SIGNED:
                    raise CaseError(f"case {cell.case.case_code!r} is signed off; reopen it to change cells")
                if expected_version is not None and cell.version != expected_version:
                    raise ConflictError(_changed_by_other(cell))
                if why := label_refusal(cell, label):
                    raise CaseError(f"{cell.name}: {why}")
                self._review(s, cell, u, label, note)
                s.flush()  # UPDATE cells ... WHERE version = <the version read above>
                return cell.version
        except StaleDataError:  # another writer committed between our read and our write; nothing was written
            raise self._cell_conflict(cell_id) from None

    def _open_for_review(self, s: Session, actor: Actor, case_id: int) -> tuple:
        """(user row, case) for a review change: the role allows it and the case is not signed off."""
        u = self._authorize(s, actor, "review")
        case = self._case(s, case_id)
        if case.status == STATUS_SIGNED:
            raise CaseError(f"case {case.case_code!r} is signed off; reopen it to change cells")
        return u, case

    @staticmethod
    def _review(s: Session, cell: Cell, u, label: str, note: str = "", action: str | None = None,
                action_id: str | None = None, via: str = VIA_ONE) -> None:
        before = cell.label or ""
        prior = {"final_label": cell.final_label, "reviewed_by": cell.reviewed_by, "reviewed_by_id": cell.reviewed_by_id,
                 "reviewed_at": cell.reviewed_at.isoformat() if cell.reviewed_at else None, "via": via}
        action = action or ("dismiss" if label == DISMISSED_CODE else
                            "confirm" if label == cell.label and cell.final_label in (None, label) else "reclassify")
        cell.final_label = label
        cell.reviewed_by, cell.reviewed_by_id = u.username, u.id
        cell.reviewed_at = utcnow()
        s.add(_audit_row(cell.case_id, u, cell=cell, action=action, from_value=before, to_value=label, note=note,
                         action_id=action_id or _new_action_id(), before=prior))

    def _cell_conflict(self, cell_id: int) -> ConflictError:
        with self.session() as s:
            cell = s.get(Cell, cell_id)
            if cell is None:
                return ConflictError(f"cell {cell_id} was deleted while you were looking at it")
            if cell.case.status == STATUS_SIGNED:
                return ConflictError(f"case {cell.case.case_code!r} was signed off by {cell.case.signed_by} while "
                                     f"you were reviewing {cell.name}; reopen it to change cells")
            return ConflictError(_changed_by_other(cell))

    def review_cells(self, case_id: int, actor: Actor, shown: dict[int, int], *, label: str | None = None,
                     note: str = "") -> "ReviewResult":
        """Act on exactly the cells a reviewer's page showed ({cell id: version as shown}), in ONE transaction.

        ``label`` None: "these are right": each cell keeps the label it showed (the reviewer's, else the model's).
        ``label`` set: move them all to that class. Cells that cannot take it are left alone and named in the result,
        never silently changed: one changed by someone else since the page was drawn (version), not classified yet,
        unreadable, or rejected by the gate with no label (confirming gives it none: move it to a class). A cell that
        already has that reviewed label is unchanged. Every changed cell gets its own audit row; the rows share one
        action id (``undo`` takes the action back). No call confirms a cell the caller did not name.
        """
        from .caserules import OK, REJECTED, status

        action_id = _new_action_id()
        if label is not None and label not in reviewer_labels():
            raise CaseError(f"{label!r} is not a class a cell can be given")
        try:
            with self.session() as s:
                u, case = self._open_for_review(s, actor, case_id)
                cells = {c.id: c for c in case.cells}
                missing = [i for i in shown if i not in cells]
                if missing:
                    raise CaseError(f"{len(missing)} cell(s) are not part of case {case.case_code!r}; reload the page")
                changed, skipped, same = {}, [], 0
                for i, v in shown.items():
                    c = cells[i]
                    st = status(c)
                    if c.version != v:
                        skipped.append((c, f"changed by {c.reviewed_by or 'someone else'} since your page showed it "
                                           f"(now {c.label or 'unlabelled'})"))
                    elif st not in (OK, REJECTED):
                        skipped.append((c, "not classified yet" if st == "pending" else "unreadable"))
                    elif label is None and c.label is None:
                        skipped.append((c, "not judged by the model's gate: give it a class, or dismiss it as not a "
                                           "cell"))
                    elif label is not None and (why := label_refusal(c, label)):
                        skipped.append((c, why))
                    elif c.final_label is not None and c.final_label == (label or c.label):
                        same += 1
                    else:
                        new = label or c.label
                        self._review(s, c, u, new, note=note, action_id=action_id, via=VIA_GALLERY)
                        changed[i] = c
                s.flush()
                return ReviewResult(action_id if changed else None, {i: c.version for i, c in changed.items()},
                                    [(c.id, f"#{c.position + 1} {c.name}: {why}") for c, why in skipped], same)
        except StaleDataError:
            raise ConflictError("nothing was saved: a cell was changed by another reviewer at the same moment; "
                                "reload and try again") from None

    def undo(self, case_id: int, actor: Actor, action_id: str) -> "ReviewResult":
        """Take back a review action (one cell or many): each of its cells gets back the label, reviewer and time it
        had before, if nothing happened to it since; the others are named. Audited as "undo"."""
        new_id = _new_action_id()
        try:
            with self.session() as s:
                u, case = self._open_for_review(s, actor, case_id)
                rows = list(s.scalars(select(AuditEvent).where(AuditEvent.case_id == case_id,
                                                               AuditEvent.action_id == action_id)))
                if not rows:
                    raise CaseError("there is no such action to undo in this case")
                signed_since = s.scalar(select(func.max(AuditEvent.id)).where(
                    AuditEvent.case_id == case_id, AuditEvent.action.in_(("sign-off", "reopen"))))
                if signed_since is not None and signed_since > min(ev.id for ev in rows):
                    raise CaseError("the case was signed off since that action; it can no longer be undone")
                last = dict(s.execute(select(AuditEvent.cell_id, func.max(AuditEvent.id))
                                      .where(AuditEvent.case_id == case_id, AuditEvent.cell_id.is_not(None))
                                      .group_by(AuditEvent.cell_id)).all())
                cells = {c.id: c for c in case.cells}
                changed, skipped = {}, []
                for ev in rows:
                    c = cells.get(ev.cell_id)
                    if c is None or ev.before is None:
                        continue
                    if last.get(c.id) != ev.id:
                        skipped.append((c.id, f"#{c.position + 1} {c.name}: changed again since "
                                              f"(now {c.label or 'unlabelled'})"))
                        continue
                    b = ev.before
                    was = c.label or ""
                    c.final_label, c.reviewed_by, c.reviewed_by_id = b.get("final_label"), b.get("reviewed_by"), \
                        b.get("reviewed_by_id")
                    c.reviewed_at = dt.datetime.fromisoformat(b["reviewed_at"]) if b.get("reviewed_at") else None
                    s.add(_audit_row(case.id, u, cell=c, action="undo", from_value=was, to_value=c.label or "",
                                     note=f"undo of action {action_id}", action_id=new_id))
                    changed[c.id] = c
                s.flush()
                return ReviewResult(new_id if changed else None, {i: c.version for i, c in changed.items()}, skipped)
        except StaleDataError:
            raise ConflictError("nothing was undone: a cell was changed by another reviewer at the same moment; "
                                "reload and try again") from None

    def sign_off(self, case_id: int, actor: Actor, *, password: str | None = None,
                 expected_version: int | None = None, expected_versions: dict[int, int] | None = None,
                 no_specimen_id: bool = False, under_target: bool = False) -> dict:
        """Sign a case off; returns the signature stored with it.

        Only a pathologist (or admin) may, and only deliberately: ``password`` is checked again (local accounts;
        a wrong one counts towards the lock like a failed sign-in), or an identity-provider sign-in must be recent
        (``AuthPolicy.reauth_minutes``). ``expected_versions``: {cell id: version} of every cell as the signer's
        page showed it; if any cell changed since, nothing is signed and the changed cells are named. A case with no
        specimen / accession number is signed only with ``no_specimen_id`` (the signer's explicit "no specimen id"),
        and one counted under its target count only with ``under_target``; both are recorded in the signature."""
        with self.session() as s:  # the role first: a technologist is refused, not asked for a password
            self._authorize(s, actor, "sign")
        proof = self._signature_proof(actor, password)
        try:
            return self._sign_off(case_id, actor, proof, expected_version, expected_versions,
                                  no_specimen_id=no_specimen_id, under_target=under_target)
        except CaseError as exc:  # the password was right ("ok-signature" in the sign-in log), but nothing was signed
            with self.session() as s:
                self._event(s, actor.username, "signature-not-made", actor.user_id, str(exc)[:500])
            raise

    def _sign_off(self, case_id: int, actor: Actor, proof: str, expected_version: int | None,
                  expected_versions: dict[int, int] | None, *, no_specimen_id: bool, under_target: bool) -> dict:
        from .caserules import sign_off_blockers
        from .differential import sign_off_checks

        try:
            with self.session() as s:
                u = self._authorize(s, actor, "sign")
                case = self._case(s, case_id)
                if case.status == STATUS_SIGNED:
                    raise CaseError(f"case {case.case_code!r} is already signed off by {case.signed_by}")
                if expected_version is not None and case.version != expected_version:
                    raise ConflictError("the case changed since you loaded it; reload and try again")
                if expected_versions is not None:
                    changed = [c for c in case.cells if expected_versions.get(c.id) != c.version]
                    if changed:
                        raise ConflictError(f"not signed: {len(changed)} cell(s) changed since your page showed the "
                                            f"case: {_cells_named(changed)}; check them, then sign again",
                                            changed={c.id: c.version for c in changed})
                blockers = sign_off_blockers(case)
                checks = sign_off_checks(case)
                blockers += checks.refusals(no_specimen_id=no_specimen_id, under_target=under_target)
                if blockers:
                    raise CaseError("; ".join(blockers))
                for c in case.cells:  # bump every cell's version: what is signed is what was checked above,
                    flag_modified(c, "reviewed_by")  # and a review that read a cell before this commit conflicts
                case.status = STATUS_SIGNED
                case.signed_by, case.signed_by_id = u.username, u.id
                case.signed_at = utcnow()
                case.signature = {"user_id": u.id, "username": u.username, "name": u.display_name or u.username,
                                  "role": u.role, "at": case.signed_at.isoformat(timespec="seconds") + "Z",
                                  "case_version": case.version + 1, "model_sha256": case.model_sha256,
                                  "cells": len(case.cells), "proof": proof,
                                  "specimen_id": checks.specimen_id or None,
                                  "no_specimen_id": checks.no_specimen_id,  # signed without one, on purpose
                                  "counted": checks.counted, "target": checks.target,
                                  "under_target": checks.under_target}
                s.add(_audit_row(case.id, u, action="sign-off", from_value=STATUS_OPEN, to_value=STATUS_SIGNED,
                             note=signature_text(case.signature)))
                s.flush()
                return dict(case.signature)
        except StaleDataError:  # a cell or the case changed meanwhile; nothing was written
            raise self._case_conflict(case_id) from None

    def _case_conflict(self, case_id: int) -> ConflictError:
        with self.session() as s:
            case = s.get(Case, case_id)
            if case is None:
                return ConflictError(f"case {case_id} was deleted while you were signing it off")
            if case.status == STATUS_SIGNED:
                return ConflictError(f"case {case.case_code!r} was signed off by {case.signed_by} meanwhile")
            return ConflictError(f"case {case.case_code!r} changed while you were signing it off (a cell was "
                                 "reviewed meanwhile); reload and try again")

    def reopen(self, case_id: int, actor: Actor, reason: str) -> None:
        reason = (reason or "").strip()
        if not reason:
            raise CaseError("reopening a signed case needs a reason")
        try:
            with self.session() as s:
                u = self._authorize(s, actor, "reopen")
                case = self._case(s, case_id)
                if case.status != STATUS_SIGNED:
                    last = s.scalars(select(AuditEvent).where(AuditEvent.case_id == case.id,
                                                              AuditEvent.action == "reopen")
                                     .order_by(AuditEvent.id.desc()).limit(1)).first()
                    raise CaseError(f"case {case.case_code!r} is not signed off" + (
                        f": {who_text(last.who, last.who_kind)} reopened it at {last.at:%H:%M:%S} UTC "
                        f"({last.note})" if last is not None else ""))
                case.status = STATUS_OPEN
                case.signed_by = case.signed_by_id = case.signed_at = case.signature = None
                s.add(_audit_row(case.id, u, action="reopen", from_value=STATUS_SIGNED, to_value=STATUS_OPEN, note=reason))
        except StaleDataError:
            raise ConflictError("the case was changed (reopened or signed) by someone else at the same moment; "
                                "reload and try again") from None

    def set_case_details(self, case_id: int, actor: Actor, *, specimen: dict | None = None,
                         target_count: int | None = None, expected: dict | None = None) -> None:
        """Store the case's specimen details (SPECIMEN_FIELDS; empty strings clear a field) and/or its target count;
        audited. Refused for a signed-off case and for a role that may not classify.

        ``expected``: the details as the caller's form showed them (``case_details(case)``). If they were changed
        since (a colleague saved the same form), nothing is saved and a ConflictError names who changed what: a
        stale form must not overwrite a colleague's entry, nor be told it was saved."""
        clean = None
        if specimen is not None:
            known = dict(SPECIMEN_FIELDS)
            unknown = sorted(set(specimen) - set(known))
            if unknown:
                raise CaseError(f"unknown specimen field(s): {', '.join(unknown)}")
            clean = {}
            for k, v in specimen.items():
                v = str(v or "").strip()
                if len(v) > SPECIMEN_MAX:
                    raise CaseError(f"{known[k]} has at most {SPECIMEN_MAX} characters (this one has {len(v)})")
                if k == "collected" and v:
                    try:
                        dt.date.fromisoformat(v)
                    except ValueError:
                        raise CaseError(f"collection date {v!r} is not a date written as YYYY-MM-DD") from None
                if v:
                    clean[k] = v
        if target_count is not None:
            if isinstance(target_count, bool) or not isinstance(target_count, int) or \
                    not TARGET_MIN <= target_count <= TARGET_MAX:
                raise CaseError(f"the target count is a whole number of cells from {TARGET_MIN} to {TARGET_MAX}")
        try:
            with self.session() as s:
                u = self._authorize(s, actor, "classify")
                case = self._case(s, case_id)
                if case.status == STATUS_SIGNED:
                    raise CaseError(f"case {case.case_code!r} is signed off; reopen it to change its details")
                if expected is not None and any(case_details(case)[k] != v for k, v in _details(expected).items()):
                    raise ConflictError(_details_changed(s, case, _details(expected)))
                if clean is not None and clean != (case.specimen or {}):
                    case.specimen = clean or None
                    s.add(_audit_row(case.id, u, action="specimen", note="; ".join(f"{k}={v}" for k, v in clean.items())
                                     or "cleared"))
                if target_count is not None and target_count != case.target_count:
                    s.add(_audit_row(case.id, u, action="target-count", from_value=str(case.target_count or ""),
                                     to_value=str(target_count)))
                    case.target_count = target_count
        except StaleDataError:
            raise ConflictError("the case was changed by someone else at the same moment; nothing was saved, "
                                "reload and try again") from None

    def integrity_ok(self) -> bool:
        return not self.integrity_problems()

    def integrity_problems(self) -> list[str]:
        """What is wrong with the stored data, in words (``bmcore.integrity``); empty when all is well."""
        return integrity_problems(self.engine, self.url)

    def audit(self, case_id: int, actor: Actor | None = None) -> list[dict]:
        with self.session() as s:
            self._may_read(s, actor)
            return [{"at": e.at, "who": who_text(e.who, e.who_kind), "user_id": e.user_id, "action": e.action,
                     "cell": e.cell_name, "from": e.from_value, "to": e.to_value, "note": e.note,
                     "action_id": e.action_id or "", "via": (e.before or {}).get("via", "")}
                    for e in s.scalars(select(AuditEvent).where(AuditEvent.case_id == case_id)
                                       .order_by(AuditEvent.id))]

def case_store_from_env() -> CaseStore:
    import os

    return CaseStore(os.environ.get("BM_DATABASE_URL") or None)


__all__ = ["CaseStore", "CellInput", "CaseError", "ConflictError", "StoreError", "PermissionDenied", "AuthError",
           "Actor", "Case", "Cell", "AuditEvent", "Job", "case_store_from_env", "STATUS_OPEN", "STATUS_SIGNED"]


def label_refusal(cell: "Cell", label: str) -> str:
    """Why ``cell`` cannot take ``label`` ("" if it can): only the classes a reviewer may give (``reviewer_labels``),
    and the dismissed mark only for an image the gate would not judge (a classified cell that is no cell is an
    artefact, ART, or not identifiable, NIF)."""
    if label not in reviewer_labels():
        return f"{label!r} is not a class a cell can be given"
    if label == DISMISSED_CODE and not cell.rejected:
        return ("only an image the gate would not judge can be dismissed as not a cell; give a classified cell "
                "a class (ART artefact, NIF not identifiable)")
    return ""


def _cell_row(position: int, c: CellInput, case_id: int | None = None) -> Cell:
    """The row of one cell of a case (``case_id`` None: appended to a new case's ``cells``)."""
    return Cell(case_id=case_id, position=position, name=_short_name(c.name), ok=c.ok, error=c.error,
                sha256=c.sha256, thumbnail=c.thumbnail, predicted=c.predicted, confidence=c.confidence,
                probabilities=c.probabilities or {}, uncertain=c.uncertain, hairy_flag=c.hairy_flag,
                rejected=c.rejected, reject_reason=c.reject_reason, critical=c.critical, pending=c.pending,
                origin=c.origin)


def _field_row(case_id: int, f: dict) -> FieldImage:
    """The stored smear field a case's cells were found in (``bmcore.fields.field_record``)."""
    return FieldImage(case_id=case_id, name=_short_name(f["name"]), width=f["width"], height=f["height"],
                      image=f["image"], scale=f.get("scale"))


def case_details(case) -> dict:
    """A case's specimen details and target count as stored (what a details form shows and sends back as
    ``expected``)."""
    return {"specimen": dict(case.specimen or {}), "target_count": case.target_count}


def _details(d: dict) -> dict:
    """``expected`` as stored values, only the parts it gives (a page that shows only the target count sends only
    that)."""
    out = {}
    if "specimen" in d:
        out["specimen"] = {k: v for k, v in (d["specimen"] or {}).items() if v}
    if "target_count" in d:
        out["target_count"] = d["target_count"]
    return out


def _details_changed(s: Session, case: "Case", shown: dict) -> str:
    """Why a stale details form is refused: who changed what since it was drawn, and what is stored now."""
    now = case_details(case)
    labels = dict(SPECIMEN_FIELDS)
    what = [f"{labels[k]} now {now['specimen'].get(k, '')!r} (your page showed {shown['specimen'].get(k, '')!r})"
            for k, _ in SPECIMEN_FIELDS
            if "specimen" in shown and now["specimen"].get(k, "") != shown["specimen"].get(k, "")]
    if "target_count" in shown and now["target_count"] != shown["target_count"]:
        what.append(f"target count now {now['target_count'] or 'not set'} (your page showed "
                    f"{shown['target_count'] or 'not set'})")
    last = s.scalars(select(AuditEvent).where(AuditEvent.case_id == case.id,
                                              AuditEvent.action.in_(("specimen", "target-count")))
                     .order_by(AuditEvent.id.desc()).limit(1)).first()
    who = who_text(last.who, last.who_kind) if last is not None else "someone"
    noun = "the target count" if set(shown) == {"target_count"} else "the specimen details"
    return f"{who} changed {noun} after your page showed it: " + "; ".join(what) + ". Nothing was saved."


def _audit_row(case_id: int, u, *, cell: "Cell | None" = None, **kw) -> AuditEvent:
    """An audit row by signed-in user ``u`` (a ``bmcore.auth.User`` row the store just authorized)."""
    return AuditEvent(case_id=case_id, cell_id=cell.id if cell else None, cell_name=cell.name if cell else "",
                      who=u.username, user_id=u.id, who_kind=WHO_USER, **kw)


def _new_action_id() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


def _untouched_by(case: Case, actor) -> bool:
    return isinstance(actor, Actor) and case.created_by_id == actor.user_id and case.status == STATUS_OPEN and \
        all(c.pending or not c.ok for c in case.cells) and not any(c.final_label for c in case.cells)


def _short_name(name: str) -> str:
    """A file name that fits ``cells.name``: over-long names keep their start and their extension."""
    if len(name) <= NAME_MAX:
        return name
    stem, dot, ext = name.rpartition(".")
    ext = (dot + ext) if dot and len(ext) <= 10 else ""
    return name[:NAME_MAX - len(ext) - 1] + "…" + ext


def cell_inputs(items, preds) -> list[CellInput]:
    """Pair collected inputs with their predictions into rows for the store (sha256 + thumbnail per crop)."""
    import hashlib

    from .preprocess import ImageDecodeError, decode_image, thumbnail_of

    out = []
    for it, p in zip(items, preds):
        if not p.ok:
            out.append(CellInput(name=p.name, ok=False, error=p.error))
            continue
        data = it.data()
        thumb = getattr(p, "thumbnail", None)  # made by the predictor from its own decode, when asked
        if thumb is None:
            try:
                thumb = thumbnail_of(decode_image(data), data)
            except ImageDecodeError:  # decoded a moment ago; cannot happen unless the file changed
                thumb = None
        out.append(CellInput(name=p.name, ok=True, sha256=hashlib.sha256(data).hexdigest(), thumbnail=thumb,
                             predicted=p.code, confidence=p.confidence, probabilities=p.probabilities,
                             uncertain=p.uncertain, hairy_flag=p.hairy_flag, rejected=p.rejected,
                             reject_reason=p.reject_reason, critical=",".join(p.critical)))
    return out
