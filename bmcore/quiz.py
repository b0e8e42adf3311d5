"""Teaching mode: proficiency quizzes built from the lab's signed cells, taken by learners and graded as
morphologists grade.

* An instructor (``teach``: pathologists and admins) picks cells of signed cases that are not demos
  (``bmcore.agreement.counted_signed_cells``: what the agreement figures count) by class, by case, or by difficulty
  (the model's label differed from the signed one, or a reviewer changed the model's label), sets the classes
  offered and a time limit, and publishes the quiz. A quiz keeps a copy of what it needs (the stored thumbnail, the
  signed label, the model's label) taken when it was made: a case reopened later does not change a quiz's key.
* A learner (``quiz``: every role, including ``student``, which reads no case) sees only the quiz's images, in an
  order of their own, with nothing identifying (no case, no file name, no specimen detail), and neither the model's
  nor the expert's label until they submit. Answers are kept as they are given (a reload keeps them; two tabs of one
  learner cannot overwrite each other unseen: each save names the version it saw). After the time limit no answer
  changes; after submission nothing does.
* Grading (``grade``): against the signed label, strict and tolerant (``ADJACENT``: neighbouring maturation stages
  accepted), per-class sensitivity, the confusion matrix and Cohen's kappa (scikit-learn), and the model's own score on
  the same cells beside it (an image its gate refused counts as wrong).
* A learner reads their own results and history only; an instructor reads everyone's, per quiz (which cells most of
  the class got wrong) and per learner. Every step (made, published, closed, started, submitted) is in
  ``quiz_events`` with who and when. The store checks each role itself, as for reviews.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text,
                        UniqueConstraint, select)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.orm.exc import StaleDataError

from .db import NO_REUSE, Base, CaseError, ConflictError, PermissionDenied, utcnow

from .agreement import REFUSED as MODEL_REFUSED  # noqa: E402  (the model's "label" of an image its gate refused)

NO_ANSWER = "(no answer)"
QUIZ_MAX_CELLS = 200
TITLE_MAX = 200
TIME_LIMIT_MAX = 240  # minutes
GRACE_SECONDS = 30    # a save that left the browser as the clock ran out still counts
DIFFICULTIES = {"any": "any signed cell",
                "model_disagreed": "the model's label (or its refusal) differed from the signed label",
                "reviewer_changed": "a reviewer changed the model's label"}

# Neighbouring stages of one maturation line: a tolerant score accepts either for the other. The granulocytic line
# promyelocyte -> myelocyte -> metamyelocyte -> band -> segmented neutrophil, and the erythroid proerythroblast ->
# erythroblast (the pairs the issue names, band/segmented, myelocyte/metamyelocyte, proerythroblast/erythroblast,
# and the other steps of the same line). Blast/promyelocyte is not among them: that difference matters clinically.
ADJACENT_PAIRS = (("PMO", "MYB"), ("MYB", "MMZ"), ("MMZ", "NGB"), ("NGB", "NGS"), ("PEB", "EBO"))
ADJACENT: frozenset[frozenset[str]] = frozenset(frozenset(p) for p in ADJACENT_PAIRS)


def adjacent_text() -> str:
    """The pairs the tolerant score accepts, in words."""
    from .tasks import CELL_NAMES

    return ", ".join(f"{CELL_NAMES[a].lower()} ({a}) / {CELL_NAMES[b].lower()} ({b})" for a, b in ADJACENT_PAIRS)


def tolerant_match(answer: str, expert: str) -> bool:
    return answer == expert or frozenset((answer, expert)) in ADJACENT


class Quiz(Base):
    __tablename__ = "quizzes"
    __table_args__ = (NO_REUSE,)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(TITLE_MAX))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))
    created_by_id: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list] = mapped_column(JSON)                 # the classes a learner may answer, in order
    time_limit_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    selection: Mapped[dict] = mapped_column(JSON, default=dict)  # how the instructor picked the cells
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    closed: Mapped[bool] = mapped_column(Boolean, default=False)


class QuizItem(Base):
    __tablename__ = "quiz_items"
    __table_args__ = (UniqueConstraint("quiz_id", "position"), NO_REUSE)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    quiz_id: Mapped[int] = mapped_column(ForeignKey("quizzes.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    image: Mapped[bytes] = mapped_column(LargeBinary)   # the cell's stored thumbnail, copied
    sha256: Mapped[str] = mapped_column(String(64))
    expert: Mapped[str] = mapped_column(String(10))     # the signed label
    model: Mapped[str] = mapped_column(String(10))      # the model's label, or MODEL_REFUSED
    model_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_name: Mapped[str] = mapped_column(String(200), default="")
    model_sha256: Mapped[str] = mapped_column(String(64), default="")
    model_classes: Mapped[list] = mapped_column(JSON, default=list)
    reviewer_changed: Mapped[bool] = mapped_column(Boolean, default=False)
    # where it came from, for the instructor only (never sent to a learner); no foreign key: a case deleted later
    # leaves its quiz whole
    case_id: Mapped[int] = mapped_column(Integer)
    case_code: Mapped[str] = mapped_column(String(100))
    cell_id: Mapped[int] = mapped_column(Integer)


class QuizAttempt(Base):
    __tablename__ = "quiz_attempts"
    __table_args__ = (UniqueConstraint("quiz_id", "user_id"), NO_REUSE)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    quiz_id: Mapped[int] = mapped_column(ForeignKey("quizzes.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(Integer, index=True)
    username: Mapped[str] = mapped_column(String(100))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    deadline: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    submitted_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    order: Mapped[list] = mapped_column(JSON)            # the quiz positions in the order this learner sees them
    answers: Mapped[dict] = mapped_column(JSON, default=dict)  # {str(position): class code}
    version: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    __mapper_args__ = {"version_id_col": version}


class QuizEvent(Base):
    """Append-only: who made, published, closed, started and submitted which quiz, and when."""

    __tablename__ = "quiz_events"
    __table_args__ = (NO_REUSE,)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    quiz_id: Mapped[int] = mapped_column(Integer, index=True)
    who: Mapped[str] = mapped_column(String(100))
    who_id: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(30))
    detail: Mapped[str] = mapped_column(Text, default="")


# -- grading --------------------------------------------------------------------------------------------------
@dataclass
class Grade:
    n: int
    strict: int                      # answers equal to the signed label
    tolerant: int                    # ... or a neighbouring stage of it (ADJACENT)
    answered: int
    kappa: float | None              # Cohen's kappa against the signed labels (None where it is undefined)
    per_class: list[dict] = field(default_factory=list)  # {class, cells, strict, tolerant, sensitivity, ...}
    labels: list[str] = field(default_factory=list)      # rows: the signed classes; columns: labels + NO_ANSWER...
    columns: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)

    @property
    def strict_score(self) -> float:
        return self.strict / self.n if self.n else 0.0

    @property
    def tolerant_score(self) -> float:
        return self.tolerant / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {"n": self.n, "strict": self.strict, "tolerant": self.tolerant, "answered": self.answered,
                "strict_score": self.strict_score, "tolerant_score": self.tolerant_score, "kappa": self.kappa,
                "per_class": self.per_class, "labels": self.labels, "columns": self.columns,
                "confusion": self.confusion}


def grade(expert: list[str], answers: list[str | None], classes: list[str] | None = None) -> Grade:
    """Answers (None: not answered) against the signed labels, cell by cell."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    given = [a if a else NO_ANSWER for a in answers]
    n = len(expert)
    strict = sum(a == e for a, e in zip(given, expert))
    tolerant = sum(tolerant_match(a, e) for a, e in zip(given, expert))
    rows = list(dict.fromkeys([c for c in (classes or []) if c in set(expert)] + sorted(set(expert))))
    extra = sorted(set(given) - set(rows) - set(classes or []) - {NO_ANSWER, MODEL_REFUSED})
    cols = list(dict.fromkeys(rows + [c for c in (classes or []) if c not in rows] + extra +
                              [x for x in (MODEL_REFUSED, NO_ANSWER) if x in given]))
    cm = confusion_matrix(expert, given, labels=cols)[: len(rows)] if n else []
    per = []
    for k in rows:
        idx = [i for i, e in enumerate(expert) if e == k]
        s = sum(given[i] == k for i in idx)
        t = sum(tolerant_match(given[i], k) for i in idx)
        per.append({"class": k, "cells": len(idx), "strict": s, "tolerant": t, "sensitivity": s / len(idx),
                    "tolerant_sensitivity": t / len(idx)})
    kappa = None
    if n and len(set(expert) | set(given)) > 1:
        k = float(cohen_kappa_score(expert, given))
        kappa = None if k != k else k  # nan where the chance agreement is 1
    return Grade(n, strict, tolerant, sum(a != NO_ANSWER for a in given), kappa, per, rows, cols,
                 [list(map(int, r)) for r in cm])


# -- the store ------------------------------------------------------------------------------------------------
def _quiz_dict(q: Quiz, n_items: int) -> dict:
    return {"id": q.id, "title": q.title, "created_at": q.created_at, "created_by": q.created_by,
            "classes": list(q.classes), "time_limit_minutes": q.time_limit_minutes, "published": q.published,
            "closed": q.closed, "cells": n_items, "selection": dict(q.selection or {})}


def _attempt_dict(a: QuizAttempt) -> dict:
    return {"id": a.id, "quiz_id": a.quiz_id, "user_id": a.user_id, "username": a.username,
            "name": a.display_name or a.username, "started_at": a.started_at, "deadline": a.deadline,
            "submitted_at": a.submitted_at, "answers": {int(k): v for k, v in (a.answers or {}).items()},
            "order": list(a.order), "version": a.version}


def _late(a: QuizAttempt, now: dt.datetime) -> bool:
    return a.deadline is not None and now > a.deadline + dt.timedelta(seconds=GRACE_SECONDS)


class QuizMixin:
    """Quizzes on the store (mixed into ``bmcore.cases.CaseStore``)."""

    def _quiz_event(self, s, quiz_id: int, u, action: str, detail: str = "") -> None:
        s.add(QuizEvent(quiz_id=quiz_id, who=u.username, who_id=u.id, action=action, detail=detail))

    @staticmethod
    def _quiz(s, quiz_id: int) -> Quiz:
        q = s.get(Quiz, quiz_id)
        if q is None:
            raise CaseError(f"no quiz with id {quiz_id}")
        return q

    # instructor ---------------------------------------------------------------------------------------------
    def quiz_cell_pool(self, actor) -> list[dict]:
        """The cells a quiz may be built from: every counted cell of the signed cases that are not demos (without
        their images: ``quiz_cell_images``). For an instructor only."""
        from .agreement import REFUSED, counted_signed_cells
        from .caserules import REJECTED

        out = []
        with self.session() as s:
            self._authorize(s, actor, "teach")
            for case, c, st in counted_signed_cells(s):
                model = REFUSED if st == REJECTED else c.predicted
                out.append({"cell_id": c.id, "case_id": case.id, "case": case.case_code, "position": c.position,
                            "expert": c.label, "model": model, "signed_at": case.signed_at,
                            "model_disagreed": model != c.label,
                            "reviewer_changed": st != REJECTED and c.final_label is not None
                            and c.final_label != c.predicted})
        return out

    def quiz_cell_images(self, actor, cell_ids: list[int]) -> dict[int, bytes]:
        """{cell id: stored thumbnail} of counted cells of signed cases, for an instructor's preview."""
        from .agreement import counted_signed_cells

        want = set(cell_ids)
        with self.session() as s:
            self._authorize(s, actor, "teach")
            return {c.id: c.thumbnail for _, c, _ in counted_signed_cells(s) if c.id in want}

    def create_quiz(self, actor, title: str, cell_ids: list[int], classes: list[str], *,
                    time_limit_minutes: int | None = None, selection: dict | None = None,
                    publish: bool = True, seed: int | None = None) -> int:
        """A quiz of these cells (each a counted cell of a signed case that is not a demo), answered with
        ``classes`` (which must hold every cell's signed label). The cells are put in a shuffled order."""
        from .agreement import counted_signed_cells
        from .caserules import REJECTED
        from .tasks import CELL_NAMES

        title = " ".join((title or "").split())
        if not title:
            raise CaseError("give the quiz a title")
        if len(title) > TITLE_MAX:
            raise CaseError(f"a quiz title has at most {TITLE_MAX} characters")
        ids = list(dict.fromkeys(cell_ids))
        if not ids:
            raise CaseError("choose at least one cell")
        if len(ids) > QUIZ_MAX_CELLS:
            raise CaseError(f"a quiz has at most {QUIZ_MAX_CELLS} cells; {len(ids)} were chosen")
        classes = list(dict.fromkeys(classes))
        unknown = [c for c in classes if c not in CELL_NAMES]
        if unknown:
            raise CaseError(f"unknown class code(s): {', '.join(map(str, unknown))}")
        if time_limit_minutes is not None and not 1 <= int(time_limit_minutes) <= TIME_LIMIT_MAX:
            raise CaseError(f"the time limit is 1 to {TIME_LIMIT_MAX} minutes (or none)")
        with self.session() as s:
            u = self._authorize(s, actor, "teach")
            want = set(ids)
            pool = {c.id: (case, c, st) for case, c, st in counted_signed_cells(s) if c.id in want and c.thumbnail}
            missing = [i for i in ids if i not in pool]
            if missing:
                raise CaseError(f"{len(missing)} of the chosen cells are not counted cells of a signed case any more "
                                "(reopened, dismissed or deleted since the list was drawn); nothing was made. Draw "
                                "the list again.")
            lacking = sorted({pool[i][1].label for i in ids} - set(classes))
            if lacking:
                raise CaseError("offer every class the chosen cells were signed as; missing: " + ", ".join(lacking))
            q = Quiz(title=title, created_by=u.username, created_by_id=u.id, classes=classes,
                     time_limit_minutes=int(time_limit_minutes) if time_limit_minutes else None,
                     selection=dict(selection or {}), published=bool(publish))
            s.add(q)
            s.flush()
            order = list(ids)
            random.Random(seed if seed is not None else q.id * 7919 + len(ids)).shuffle(order)
            for pos, cid in enumerate(order):
                case, c, st = pool[cid]
                s.add(QuizItem(quiz_id=q.id, position=pos, image=c.thumbnail, sha256=c.sha256, expert=c.label,
                               model=MODEL_REFUSED if st == REJECTED else c.predicted, model_confidence=c.confidence,
                               model_name=case.model_name, model_sha256=case.model_sha256 or "",
                               model_classes=list(case.model_classes or []),
                               reviewer_changed=st != REJECTED and c.final_label is not None
                               and c.final_label != c.predicted,
                               case_id=case.id, case_code=case.case_code, cell_id=c.id))
            cases = sorted({pool[i][0].case_code for i in ids})
            self._quiz_event(s, q.id, u, "created", f"{len(ids)} cells of {len(cases)} signed case(s): "
                             f"{', '.join(cases)[:500]}; classes offered {', '.join(classes)}; time limit "
                             f"{q.time_limit_minutes or 'none'}")
            if publish:
                self._quiz_event(s, q.id, u, "published")
            return q.id

    def set_quiz_state(self, actor, quiz_id: int, *, published: bool | None = None, closed: bool | None = None) -> None:
        """Publish a quiz to learners, or close it (no new attempt starts; answers in progress may be submitted)."""
        with self.session() as s:
            u = self._authorize(s, actor, "teach")
            q = self._quiz(s, quiz_id)
            if published is not None and published != q.published:
                q.published = published
                self._quiz_event(s, q.id, u, "published" if published else "unpublished")
            if closed is not None and closed != q.closed:
                q.closed = closed
                self._quiz_event(s, q.id, u, "closed" if closed else "reopened")

    def quiz_items(self, actor, quiz_id: int) -> list[dict]:
        """Every item with its key and source (case, cell): for an instructor only."""
        with self.session() as s:
            self._authorize(s, actor, "teach")
            self._quiz(s, quiz_id)
            return [{"position": i.position, "image": i.image, "expert": i.expert, "model": i.model,
                     "model_confidence": i.model_confidence, "case": i.case_code, "case_id": i.case_id,
                     "cell_id": i.cell_id, "reviewer_changed": i.reviewer_changed, "model_sha256": i.model_sha256,
                     "model_classes": list(i.model_classes or [])}
                    for i in s.scalars(select(QuizItem).where(QuizItem.quiz_id == quiz_id)
                                       .order_by(QuizItem.position))]

    def quiz_events(self, actor, quiz_id: int | None = None) -> list[dict]:
        with self.session() as s:
            self._authorize(s, actor, "teach")
            q = select(QuizEvent).order_by(QuizEvent.id)
            if quiz_id is not None:
                q = q.where(QuizEvent.quiz_id == quiz_id)
            return [{"at": e.at, "quiz_id": e.quiz_id, "who": e.who, "action": e.action, "detail": e.detail}
                    for e in s.scalars(q)]

    # learner ------------------------------------------------------------------------------------------------
    def list_quizzes(self, actor) -> list[dict]:
        """The quizzes this user may see, each with their own attempt (or None): every quiz for an instructor, the
        published ones for anyone else."""
        with self.session() as s:
            u = self._authorize(s, actor, "quiz")
            from .auth import allows

            teach = allows(u.role, "teach")
            counts = Counter(s.scalars(select(QuizItem.quiz_id)))
            mine = {a.quiz_id: _attempt_dict(a) for a in
                    s.scalars(select(QuizAttempt).where(QuizAttempt.user_id == u.id))}
            out = []
            for q in s.scalars(select(Quiz).order_by(Quiz.id.desc())):
                if teach or q.published:
                    d = _quiz_dict(q, counts[q.id])
                    d["attempt"] = mine.get(q.id)
                    if not teach:
                        d.pop("selection")
                    out.append(d)
            return out

    def start_attempt(self, actor, quiz_id: int) -> dict:
        """This learner's attempt at the quiz, started now (its clock starts) or as it was."""
        with self.session() as s:
            u = self._authorize(s, actor, "quiz")
            q = self._quiz(s, quiz_id)
            a = s.scalars(select(QuizAttempt).where(QuizAttempt.quiz_id == q.id, QuizAttempt.user_id == u.id)).first()
            if a is not None:
                return _attempt_dict(a)
            if not q.published or q.closed:
                raise CaseError(f"the quiz {q.title!r} is {'closed' if q.closed else 'not published'}; it cannot be "
                                "started")
            now = utcnow()
            n = s.query(QuizItem).filter(QuizItem.quiz_id == q.id).count()
            order = list(range(n))
            random.Random(f"{q.id}:{u.id}").shuffle(order)
            a = QuizAttempt(quiz_id=q.id, user_id=u.id, username=u.username, display_name=u.display_name or "",
                            started_at=now, order=order, answers={},
                            deadline=now + dt.timedelta(minutes=q.time_limit_minutes) if q.time_limit_minutes else None)
            s.add(a)
            self._quiz_event(s, q.id, u, "started")
            s.flush()
            return _attempt_dict(a)

    def learner_items(self, actor, quiz_id: int) -> list[dict]:
        """The quiz's images in this learner's order, numbered 1..n, with nothing else: no label, no case, no file
        name. Only for a learner who started the quiz."""
        with self.session() as s:
            u = self._authorize(s, actor, "quiz")
            a = self._my_attempt(s, quiz_id, u)
            items = {i.position: i.image for i in s.scalars(select(QuizItem).where(QuizItem.quiz_id == quiz_id))}
            return [{"number": k + 1, "position": p, "image": items[p]} for k, p in enumerate(a.order)]

    @staticmethod
    def _my_attempt(s, quiz_id: int, u) -> QuizAttempt:
        a = s.scalars(select(QuizAttempt).where(QuizAttempt.quiz_id == quiz_id, QuizAttempt.user_id == u.id)).first()
        if a is None:
            raise CaseError("start the quiz first")
        return a

    def save_answers(self, actor, quiz_id: int, answers: dict[int, str | None], *, expected_version: int) -> int:
        """Set (or, with None, clear) the answers of these quiz positions; returns the attempt's new version.
        Refused after submission, after the time limit, for a class not offered, or when the attempt changed since
        the caller's page read it (another tab of the same learner)."""
        try:
            with self.session() as s:
                u = self._authorize(s, actor, "quiz")
                a = self._my_attempt(s, quiz_id, u)
                q = self._quiz(s, quiz_id)
                if a.submitted_at is not None:
                    raise CaseError("this quiz was submitted; answers cannot be changed after submission")
                if _late(a, utcnow()):
                    raise CaseError("the time is up: no answer can be changed now. The answers saved before are "
                                    "kept; submit them")
                if a.version != expected_version:
                    raise ConflictError("your answers were changed in another tab or window since this page was "
                                        "drawn; nothing was saved. The page now shows them as they are.")
                n = len(a.order)
                bad = [c for c in answers.values() if c is not None and c not in q.classes]
                if bad:
                    raise CaseError(f"{', '.join(map(str, bad))} is not a class this quiz offers")
                if any(not 0 <= int(p) < n for p in answers):
                    raise CaseError("no such cell in this quiz")
                new = dict(a.answers or {})
                for p, c in answers.items():
                    if c is None:
                        new.pop(str(int(p)), None)
                    else:
                        new[str(int(p))] = c
                a.answers = new
                s.flush()
                return a.version
        except StaleDataError:
            raise ConflictError("your answers were changed in another tab or window at the same moment; nothing "
                                "was saved. The page now shows them as they are.") from None

    def submit_attempt(self, actor, quiz_id: int, *, expected_version: int) -> dict:
        """Hand the answers in: graded from now on, and never changed again. Allowed after the time limit (the
        answers saved in time are what counts)."""
        try:
            with self.session() as s:
                u = self._authorize(s, actor, "quiz")
                a = self._my_attempt(s, quiz_id, u)
                if a.submitted_at is not None:
                    raise CaseError("this quiz was already submitted")
                if a.version != expected_version:
                    raise ConflictError("your answers were changed in another tab or window since this page was "
                                        "drawn; nothing was submitted. Look at them again, then submit.")
                a.submitted_at = utcnow()
                n = len(a.order)
                self._quiz_event(s, quiz_id, u, "submitted", f"{len(a.answers or {})} of {n} cells answered" +
                                 (" (after the time limit; the answers saved in time count)"
                                  if _late(a, a.submitted_at) else ""))
                s.flush()
                return _attempt_dict(a)
        except StaleDataError:
            raise ConflictError("your answers were changed in another tab at the same moment; nothing was "
                                "submitted") from None

    # results ------------------------------------------------------------------------------------------------
    def quiz_result(self, actor, quiz_id: int, user_id: int | None = None) -> dict:
        """A submitted attempt graded: the learner's own (``user_id`` None or theirs), or anyone's for an
        instructor. Each cell in the learner's order with the answer, the signed label and the model's."""
        from .auth import allows

        with self.session() as s:
            u = self._authorize(s, actor, "quiz")
            uid = u.id if user_id is None else user_id
            if uid != u.id and not allows(u.role, "teach"):
                raise PermissionDenied("a learner sees their own results only")
            q = self._quiz(s, quiz_id)
            a = s.scalars(select(QuizAttempt).where(QuizAttempt.quiz_id == quiz_id, QuizAttempt.user_id == uid)).first()
            if a is None or a.submitted_at is None:
                raise CaseError("no submitted attempt at this quiz" + ("" if uid == u.id else " by that learner"))
            items = {i.position: i for i in s.scalars(select(QuizItem).where(QuizItem.quiz_id == quiz_id))}
            return _graded(q, a, items)

    def quiz_report(self, actor, quiz_id: int) -> dict:
        """For an instructor: every submitted attempt graded, the share of learners wrong on each cell (most wrong
        first) and per class."""
        with self.session() as s:
            self._authorize(s, actor, "teach")
            q = self._quiz(s, quiz_id)
            items = {i.position: i for i in s.scalars(select(QuizItem).where(QuizItem.quiz_id == quiz_id))}
            attempts = list(s.scalars(select(QuizAttempt).where(QuizAttempt.quiz_id == quiz_id)
                                      .order_by(QuizAttempt.submitted_at)))
            graded = [_graded(q, a, items) for a in attempts if a.submitted_at is not None]
            in_progress = [a.display_name or a.username for a in attempts if a.submitted_at is None]
            cells = []
            for p, it in sorted(items.items()):
                got = [g["answers"][p] for g in graded]
                wrong = [x for x in got if x != it.expert]
                cells.append({"position": p, "image": it.image, "expert": it.expert, "model": it.model,
                              "case": it.case_code, "learners": len(got), "wrong": len(wrong),
                              "wrong_share": len(wrong) / len(got) if got else None,
                              "tolerant_wrong": sum(not tolerant_match(x, it.expert) for x in got),
                              "most_given_instead": Counter(wrong).most_common(1)[0][0] if wrong else ""})
            cells.sort(key=lambda c: (-(c["wrong_share"] or 0), c["position"]))
            model = graded[0]["model"] if graded else _graded(q, None, items)["model"]
            return {"quiz": _quiz_dict(q, len(items)), "attempts": graded, "in_progress": in_progress,
                    "cells": cells, "model": model}

    def learner_history(self, actor, user_id: int | None = None) -> list[dict]:
        """Every submitted attempt of one learner (their own, or anyone's for an instructor), oldest first."""
        from .auth import allows

        with self.session() as s:
            u = self._authorize(s, actor, "quiz")
            uid = u.id if user_id is None else user_id
            if uid != u.id and not allows(u.role, "teach"):
                raise PermissionDenied("a learner sees their own results only")
            out = []
            for a in s.scalars(select(QuizAttempt).where(QuizAttempt.user_id == uid,
                                                         QuizAttempt.submitted_at.is_not(None))
                               .order_by(QuizAttempt.submitted_at)):
                q = s.get(Quiz, a.quiz_id)
                items = {i.position: i for i in s.scalars(select(QuizItem).where(QuizItem.quiz_id == a.quiz_id))}
                g = _graded(q, a, items)
                g.pop("cells")
                out.append(g)
            return out

    def quiz_learners(self, actor) -> list[dict]:
        """Everyone who submitted a quiz: {user_id, name, attempts}, for an instructor."""
        with self.session() as s:
            self._authorize(s, actor, "teach")
            rows = Counter()
            names = {}
            for a in s.scalars(select(QuizAttempt).where(QuizAttempt.submitted_at.is_not(None))):
                rows[a.user_id] += 1
                names[a.user_id] = a.display_name or a.username
            return [{"user_id": k, "name": names[k], "attempts": v} for k, v in sorted(rows.items())]


def _graded(q: Quiz, a: QuizAttempt | None, items: dict[int, QuizItem]) -> dict:
    order = list(a.order) if a is not None else sorted(items)
    answers = {int(k): v for k, v in ((a.answers if a is not None else {}) or {}).items()}
    expert = [items[p].expert for p in order]
    given = [answers.get(p) for p in order]
    mine = grade(expert, given, list(q.classes))
    model = grade(expert, [items[p].model for p in order], list(q.classes))
    cells = [{"number": k + 1, "position": p, "image": items[p].image, "answer": answers.get(p) or NO_ANSWER,
              "expert": items[p].expert, "model": items[p].model, "model_sha256": items[p].model_sha256,
              "model_classes": list(items[p].model_classes or []),
              "strict": answers.get(p) == items[p].expert,
              "tolerant": tolerant_match(answers.get(p) or NO_ANSWER, items[p].expert)} for k, p in enumerate(order)]
    return {"quiz_id": q.id, "title": q.title, "user_id": a.user_id if a else None,
            "name": (a.display_name or a.username) if a else "", "username": a.username if a else "",
            "started_at": a.started_at if a else None, "submitted_at": a.submitted_at if a else None,
            "grade": mine.to_dict(), "model": model.to_dict(), "cells": cells,
            "answers": {p: answers.get(p) or NO_ANSWER for p in order}}


__all__ = ["ADJACENT", "ADJACENT_PAIRS", "adjacent_text", "DIFFICULTIES", "Grade", "NO_ANSWER", "MODEL_REFUSED", "Quiz", "QuizAttempt", "QuizEvent",
           "QuizItem", "QuizMixin", "grade", "tolerant_match"]
