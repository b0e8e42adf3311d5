"""Cases, cells, reviews and the audit trail, through SQLAlchemy.

An SQLite file by default; any SQLAlchemy URL (``postgresql+psycopg://...``) for a shared
lab server. The store keeps only what users typed (case id, reviewer names, notes) and, per
cell, the crop's sha256, a small thumbnail and the model's output: no patient names.

Every change to a cell or case appends an ``AuditEvent`` (who, when, cell, from, to); audit
rows are never updated or deleted by this module. Cell and case rows carry a ``version``
column used for optimistic locking: a reviewer who edits a cell that someone else changed
since they loaded it gets ``ConflictError`` instead of silently overwriting it.
"""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text,
                        UniqueConstraint, create_engine, event, select)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

STATUS_OPEN = "open"
STATUS_SIGNED = "signed"
DEFAULT_DB = Path("data") / "bmcases.db"


class CaseError(ValueError):
    """A request the store refuses (unknown case, sign-off not allowed...), with a readable reason."""


class ConflictError(CaseError):
    """Someone else changed the same record first."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Case(Base):
    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_code: Mapped[str] = mapped_column(String(100), unique=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[str] = mapped_column(String(20), default=STATUS_OPEN)
    signed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    signed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    model_name: Mapped[str] = mapped_column(String(200), default="")
    model_sha256: Mapped[str] = mapped_column(String(64), default="")
    model_classes: Mapped[list] = mapped_column(JSON, default=list)
    version: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    cells: Mapped[list["Cell"]] = relationship(back_populates="case", order_by="Cell.position",
                                               cascade="all, delete-orphan")
    __mapper_args__ = {"version_id_col": version}


class Cell(Base):
    __tablename__ = "cells"
    __table_args__ = (UniqueConstraint("case_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64), default="")
    thumbnail: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    error: Mapped[str] = mapped_column(Text, default="")
    predicted: Mapped[str] = mapped_column(String(10), default="")
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    probabilities: Mapped[dict] = mapped_column(JSON, default=dict)
    uncertain: Mapped[bool] = mapped_column(Boolean, default=False)
    hairy_flag: Mapped[bool] = mapped_column(Boolean, default=False)
    final_label: Mapped[str | None] = mapped_column(String(10), nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    case: Mapped[Case] = relationship(back_populates="cells")
    __mapper_args__ = {"version_id_col": version}

    @property
    def label(self) -> str | None:
        """The label that counts: the reviewer's if reviewed, else the model's (None if unreadable)."""
        if not self.ok:
            return None
        return self.final_label or self.predicted

    @property
    def reviewed(self) -> bool:
        return self.final_label is not None


class AuditEvent(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    cell_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cell_name: Mapped[str] = mapped_column(String(300), default="")
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    who: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(30))
    from_value: Mapped[str] = mapped_column(String(100), default="")
    to_value: Mapped[str] = mapped_column(String(100), default="")
    note: Mapped[str] = mapped_column(Text, default="")


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


def _sqlite_pragmas(dbapi_conn, _):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer; survives a killed writer
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class CaseStore:
    def __init__(self, url: str | None = None):
        if url is None:
            DEFAULT_DB.parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{DEFAULT_DB}"
        elif "://" not in url:  # a plain file path
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{url}"
        self.url = url
        kw = {"connect_args": {"timeout": 30, "check_same_thread": False}} if url.startswith("sqlite") else \
            {"pool_pre_ping": True}
        self.engine = create_engine(url, **kw)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._Session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self):
        s: Session = self._Session()
        try:
            yield s
            s.commit()
        except Exception:
            s.rollback()
            raise
        finally:
            s.close()

    # -- cases ---------------------------------------------------------------------------------------
    def create_case(self, case_code: str, cells: list[CellInput], *, who: str = "", model_name: str = "",
                    model_sha256: str = "", model_classes: list[str] | None = None) -> int:
        """Create a case with all its cells in one transaction (all or nothing)."""
        code = case_code.strip()
        if not code:
            raise CaseError("a case id is required")
        with self.session() as s:
            if s.scalar(select(Case.id).where(Case.case_code == code)) is not None:
                raise CaseError(f"case {code!r} already exists; open it on the Review page or choose another id")
            case = Case(case_code=code, created_by=who, model_name=model_name, model_sha256=model_sha256,
                        model_classes=list(model_classes or []))
            for i, c in enumerate(cells):
                case.cells.append(Cell(position=i, name=c.name, ok=c.ok, error=c.error, sha256=c.sha256,
                                       thumbnail=c.thumbnail, predicted=c.predicted, confidence=c.confidence,
                                       probabilities=c.probabilities or {}, uncertain=c.uncertain,
                                       hairy_flag=c.hairy_flag))
            s.add(case)
            s.flush()
            s.add(AuditEvent(case_id=case.id, who=who or "(name not entered)", action="create",
                             note=f"{len(cells)} cells; model {model_name}"))
            return case.id

    @staticmethod
    def _case(s: Session, case_id: int) -> Case:
        case = s.get(Case, case_id)
        if case is None:
            raise CaseError(f"no case with id {case_id}")
        return case

    def case_id(self, case_code: str) -> int | None:
        with self.session() as s:
            return s.scalar(select(Case.id).where(Case.case_code == case_code.strip()))

    def get_case(self, case_id: int) -> Case:
        with self.session() as s:
            case = self._case(s, case_id)
            _ = list(case.cells)  # load while the session is open
            s.expunge_all()
            return case

    def list_cases(self) -> list[dict]:
        with self.session() as s:
            rows = []
            for case in s.scalars(select(Case).order_by(Case.created_at.desc())):
                cells = list(case.cells)
                rows.append({"id": case.id, "case": case.case_code, "status": case.status,
                             "created": case.created_at, "cells": sum(c.ok for c in cells),
                             "unreadable": sum(not c.ok for c in cells),
                             "reviewed": sum(c.reviewed for c in cells if c.ok),
                             "uncertain_open": sum(c.uncertain and not c.reviewed for c in cells if c.ok),
                             "signed_by": case.signed_by or "", "signed_at": case.signed_at})
            return rows

    def delete_case(self, case_id: int) -> None:
        """Delete a case, its cells and its audit trail (the README explains when to do this)."""
        with self.session() as s:
            case = self._case(s, case_id)
            for ev in s.scalars(select(AuditEvent).where(AuditEvent.case_id == case_id)):
                s.delete(ev)
            s.delete(case)

    # -- reviews -------------------------------------------------------------------------------------
    def review_cell(self, cell_id: int, who: str, label: str, *, expected_version: int | None = None,
                    note: str = "") -> int:
        """Confirm (label == prediction) or reclassify a cell; returns the cell's new version."""
        who = who.strip()
        if not who:
            raise CaseError("enter your name before reviewing")
        with self.session() as s:
            cell = s.get(Cell, cell_id)
            if cell is None:
                raise CaseError(f"no cell with id {cell_id}")
            if not cell.ok:
                raise CaseError(f"{cell.name} could not be read; there is nothing to review")
            if cell.case.status == STATUS_SIGNED:
                raise CaseError(f"case {cell.case.case_code!r} is signed off; reopen it to change cells")
            if expected_version is not None and cell.version != expected_version:
                raise ConflictError(f"{cell.name} was changed by {cell.reviewed_by or 'someone else'} while you "
                                    f"were looking at it (now {cell.label}); reload and try again")
            before = cell.label or ""
            action = "confirm" if label == cell.predicted and cell.final_label in (None, label) else "reclassify"
            cell.final_label = label
            cell.reviewed_by = who
            cell.reviewed_at = utcnow()
            s.add(AuditEvent(case_id=cell.case_id, cell_id=cell.id, cell_name=cell.name, who=who, action=action,
                             from_value=before, to_value=label, note=note))
            s.flush()
            return cell.version

    def confirm_all(self, case_id: int, who: str, *, include_uncertain: bool = False) -> int:
        """Confirm every unreviewed readable cell (uncertain ones only if asked); returns how many."""
        n = 0
        for cell in self.get_case(case_id).cells:
            if cell.ok and not cell.reviewed and (include_uncertain or not cell.uncertain):
                self.review_cell(cell.id, who, cell.predicted, expected_version=cell.version)
                n += 1
        return n

    def sign_off(self, case_id: int, who: str, *, expected_version: int | None = None) -> None:
        who = who.strip()
        if not who:
            raise CaseError("enter your name before signing off")
        with self.session() as s:
            case = self._case(s, case_id)
            if case.status == STATUS_SIGNED:
                raise CaseError(f"case {case.case_code!r} is already signed off by {case.signed_by}")
            if expected_version is not None and case.version != expected_version:
                raise ConflictError("the case changed since you loaded it; reload and try again")
            open_unc = [c.name for c in case.cells if c.ok and c.uncertain and not c.reviewed]
            unreviewed = [c.name for c in case.cells if c.ok and not c.reviewed]
            if open_unc:
                raise CaseError(f"{len(open_unc)} uncertain cell(s) are unresolved (e.g. {open_unc[0]}); "
                                "review them before signing off")
            if unreviewed:
                raise CaseError(f"{len(unreviewed)} cell(s) are not reviewed yet (e.g. {unreviewed[0]})")
            case.status = STATUS_SIGNED
            case.signed_by = who
            case.signed_at = utcnow()
            s.add(AuditEvent(case_id=case.id, who=who, action="sign-off", from_value=STATUS_OPEN,
                             to_value=STATUS_SIGNED))

    def reopen(self, case_id: int, who: str, reason: str) -> None:
        who, reason = who.strip(), reason.strip()
        if not who or not reason:
            raise CaseError("reopening a signed case needs your name and a reason")
        with self.session() as s:
            case = self._case(s, case_id)
            if case.status != STATUS_SIGNED:
                raise CaseError(f"case {case.case_code!r} is not signed off")
            case.status = STATUS_OPEN
            case.signed_by = None
            case.signed_at = None
            s.add(AuditEvent(case_id=case.id, who=who, action="reopen", from_value=STATUS_SIGNED,
                             to_value=STATUS_OPEN, note=reason))

    def audit(self, case_id: int) -> list[dict]:
        with self.session() as s:
            return [{"at": e.at, "who": e.who, "action": e.action, "cell": e.cell_name, "from": e.from_value,
                     "to": e.to_value, "note": e.note}
                    for e in s.scalars(select(AuditEvent).where(AuditEvent.case_id == case_id)
                                       .order_by(AuditEvent.id))]

    def integrity_ok(self) -> bool:
        if not self.url.startswith("sqlite"):
            return True
        with self.engine.connect() as c:
            return c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


def case_store_from_env() -> CaseStore:
    import os

    return CaseStore(os.environ.get("BM_DATABASE_URL") or None)


__all__ = ["CaseStore", "CellInput", "CaseError", "ConflictError", "Case", "Cell", "AuditEvent",
           "case_store_from_env", "STATUS_OPEN", "STATUS_SIGNED"]


def cell_inputs(items, preds) -> list[CellInput]:
    """Pair collected inputs with their predictions into rows for the store (sha256 + thumbnail per crop)."""
    import hashlib
    from pathlib import Path as _P

    from .preprocess import ImageDecodeError, decode_image, thumbnail_jpeg

    out = []
    for it, p in zip(items, preds):
        if not p.ok:
            out.append(CellInput(name=p.name, ok=False, error=p.error))
            continue
        data = it.source.read_bytes() if isinstance(it.source, _P) else bytes(it.source)
        try:
            thumb = thumbnail_jpeg(decode_image(data))
        except ImageDecodeError:  # decoded a moment ago; cannot happen unless the file changed
            thumb = None
        out.append(CellInput(name=p.name, ok=True, sha256=hashlib.sha256(data).hexdigest(), thumbnail=thumb,
                             predicted=p.code, confidence=p.confidence, probabilities=p.probabilities,
                             uncertain=p.uncertain, hairy_flag=p.hairy_flag))
    return out
