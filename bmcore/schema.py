"""The case database's tables and their migration.

What the store keeps: what users typed (case id, specimen details, notes, reviewers' labels), and per cell the crop's
sha256, a small thumbnail, the smear field and box it was cut from, and the model's output; the signed-off
signature; an append-only audit trail; the background jobs' state. No patient names are asked for. A database made by
an older version gains the newer columns in place (``add_missing_columns``) with the data changes that go with them
(``migrate``).
"""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text,
                        UniqueConstraint, create_engine, event, inspect, text)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .db import NO_REUSE as _NO_REUSE
from .db import Base, utcnow

STATUS_OPEN = "open"
STATUS_SIGNED = "signed"
NAME_MAX = 300  # characters of a file name kept in cells.name; a longer one is truncated, the full name audited
CODE_MAX = 100
JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_INTERRUPTED = "queued", "running", "done", "failed", "interrupted"
JOB_LIVE = (JOB_QUEUED, JOB_RUNNING)
WHO_USER, WHO_SYSTEM, WHO_TYPED = "user", "system", "typed"
# how a review row was made: one cell at a time, or a gallery action on the cells of a page (audit.before["via"])
VIA_ONE, VIA_GALLERY = "one cell", "gallery"
# the optional specimen details a case may carry (key, label); each at most SPECIMEN_MAX characters
SPECIMEN_FIELDS = (("specimen_id", "Specimen / accession no."), ("site", "Specimen type and site"),
                   ("collected", "Collection date (YYYY-MM-DD)"), ("stain", "Stain"))
SPECIMEN_MAX = 100
TARGET_MIN, TARGET_MAX = 1, 10000


class Case(Base):
    __tablename__ = "cases"
    __table_args__ = (_NO_REUSE,)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_code: Mapped[str] = mapped_column(String(100), unique=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    created_by_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default=STATUS_OPEN)
    signed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    signed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    signed_by_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the signature of the sign-off: user id, user name, display name, role, time, case version, model sha256, how
    # the signer re-authenticated (bmcore.cases.CaseStore.sign_off)
    signature: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # opened from assets/demo ("Try the demo case"): example crops of a public dataset, not a patient; marked as a
    # demo on every page and export and never counted in a figure of the lab's own work (bmcore.agreement)
    demo: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    model_name: Mapped[str] = mapped_column(String(200), default="")
    model_sha256: Mapped[str] = mapped_column(String(64), default="")
    model_classes: Mapped[list] = mapped_column(JSON, default=list)
    # the review rules in force when the case was classified (bmcore.triage.ReviewRules.to_dict())
    rules: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # how the model computed (bmcore.predictor.Predictor.inference_record): engine, precision, TTA, the ONNX file's
    # sha256; None for cases classified before it was recorded (torch fp32 with the bundle's TTA)
    inference: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # optional specimen details typed by the lab (SPECIMEN_FIELDS) and the differential's target count (cells)
    specimen: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    target_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    cells: Mapped[list["Cell"]] = relationship(back_populates="case", order_by="Cell.position",
                                               cascade="all, delete-orphan")
    __mapper_args__ = {"version_id_col": version}


class Cell(Base):
    __tablename__ = "cells"
    __table_args__ = (UniqueConstraint("case_id", "position"), _NO_REUSE)
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
    # refused by the model's quality / out-of-distribution gate: no class counts unless a reviewer gives one
    rejected: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    reject_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    # created with the case, not classified yet (a background job fills it in)
    pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # critical classes whose calibrated probability reached the case's review threshold, comma-separated
    critical: Mapped[str] = mapped_column(String(50), default="", server_default="")
    final_label: Mapped[str | None] = mapped_column(String(10), nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    reviewed_by_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # a cell found in a smear-field image (bmcore.fields): {"field": name, "box": [x0, y0, x1, y1] px in the field,
    # "cell_number", "um_per_px", "scale_source"}; None for an uploaded single-cell crop
    origin: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    case: Mapped[Case] = relationship(back_populates="cells")
    __mapper_args__ = {"version_id_col": version}

    @property
    def label(self) -> str | None:
        """The label that counts: the reviewer's if reviewed, else the model's (None if unreadable, rejected or pending)."""
        if not self.ok or self.pending:
            return None
        if self.final_label:
            return self.final_label
        return None if self.rejected else self.predicted

    @property
    def reviewed(self) -> bool:
        return self.final_label is not None


class FieldImage(Base):
    """A smear-field image whose cells joined a case (bmcore.fields): a reduced JPEG for drawing its boxes on."""

    __tablename__ = "field_images"
    __table_args__ = (UniqueConstraint("case_id", "name"), _NO_REUSE)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))
    width: Mapped[int] = mapped_column(Integer)    # of the original field, px (the cells' boxes are in these)
    height: Mapped[int] = mapped_column(Integer)
    image: Mapped[bytes] = mapped_column(LargeBinary)  # JPEG, at most FIELD_IMAGE_SIDE px a side
    scale: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # {"um_per_px", "source"}


class AuditEvent(Base):
    __tablename__ = "audit"
    __table_args__ = (_NO_REUSE,)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    cell_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cell_name: Mapped[str] = mapped_column(String(300), default="")
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    who: Mapped[str] = mapped_column(String(100))
    # "user": ``who`` is the signed-in user ``user_id``'s name; "system": the classifier; "typed": a name typed
    # into a text box before accounts existed (rows migrated from an older database), never verified
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    who_kind: Mapped[str] = mapped_column(String(10), default=WHO_SYSTEM, server_default=WHO_TYPED)
    # review rows: the action they belong to (a gallery move or confirmation of many cells shares one) and the cell's
    # review state before it (final label, reviewer, time), so that ``CaseStore.undo`` can restore it
    action_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    before: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    action: Mapped[str] = mapped_column(String(30))
    # "create" and "add-cells" rows: how many cells the event put into the case (what the integrity check adds up)
    n_cells: Mapped[int | None] = mapped_column(Integer, nullable=True)
    from_value: Mapped[str] = mapped_column(String(100), default="")
    to_value: Mapped[str] = mapped_column(String(100), default="")
    note: Mapped[str] = mapped_column(Text, default="")


class Job(Base):
    """A classification job: its state lives here so a restarted server can tell a stopped job from a running one."""

    __tablename__ = "jobs"
    __table_args__ = (_NO_REUSE,)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=JOB_QUEUED)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    error: Mapped[str] = mapped_column(Text, default="")


def _sqlite_pragmas(dbapi_conn, _):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer; survives a killed writer
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def open_engine(url: str):
    """An engine on ``url`` with every table made and migrated (SQLite: WAL, foreign keys, full sync)."""
    kw = {"connect_args": {"timeout": 30, "check_same_thread": False}} if url.startswith("sqlite") else \
        {"pool_pre_ping": True}
    engine = create_engine(url, **kw)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    Base.metadata.create_all(engine)
    migrate(engine, add_missing_columns(engine))
    return engine


def add_missing_columns(engine) -> set[str]:
    """Columns added since a database was created (e.g. ``cells.rejected``) are added in place, with defaults.
    Returns the added ones as ``table.column``."""
    insp = inspect(engine)
    added = set()
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name not in have and (col.server_default is not None or col.nullable):
                ddl = f"ALTER TABLE {table.name} ADD COLUMN {col.name} {col.type.compile(engine.dialect)}"
                if col.server_default is not None:
                    ddl += f" DEFAULT {col.server_default.arg!r}"
                with engine.begin() as c:
                    c.exec_driver_sql(ddl.replace('"', "'"))
                added.add(f"{table.name}.{col.name}")
    return added


def migrate(engine, added: set[str]) -> None:
    """Data changes that go with new columns. ``audit.who_kind``: an older database's names were typed into a
    text box (kept, marked "typed"); its classifier rows were the system's."""
    if "model_events.ends_job" in added:  # the column is added without its UNIQUE: the index gives it
        with engine.begin() as c:
            c.exec_driver_sql("CREATE UNIQUE INDEX IF NOT EXISTS ux_model_events_ends_job ON model_events (ends_job)")
    if "audit.who_kind" in added:
        with engine.begin() as c:
            c.exec_driver_sql(f"UPDATE audit SET who_kind = '{WHO_SYSTEM}' WHERE who IN ('(classifier)', "
                              "'(system)')")
    if "audit.n_cells" in added:  # an older database wrote the counts into the notes only: read them there once
        with engine.begin() as c:
            rows = c.exec_driver_sql("SELECT id, action, note FROM audit WHERE action IN ('create', 'add-cells')")
            for row_id, action, note in rows.fetchall():
                m = re.match(r"(\d+) cells[;:]", note or "")
                if m:
                    c.execute(text("UPDATE audit SET n_cells = :n WHERE id = :i"), {"n": int(m.group(1)), "i": row_id})
