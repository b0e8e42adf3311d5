"""Is the stored data whole? What ``python -m bmcore check`` and the server's start-up ask of the store."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from .schema import AuditEvent, Case, Cell


def integrity_problems(engine, url: str) -> list[str]:
    """What is wrong with the stored data, in words; empty when all is well.

    On every backend: each table answers a row count; no cell and no audit row points at a
    missing case; no audit row names a cell that is missing or belongs to another case; every
    case has as many cells as its "create" and "add-cells" audit events recorded (no half-written case). On
    SQLite also ``PRAGMA integrity_check`` (the file's pages, indexes and constraints) and
    ``PRAGMA foreign_key_check``. PostgreSQL keeps its own files consistent (WAL replay after a
    crash); no page-level check (such as the amcheck extension) is run there.
    """
    problems = []
    counts = select(func.count())
    try:
        with engine.connect() as c:
            if url.startswith("sqlite"):
                res = [r[0] for r in c.exec_driver_sql("PRAGMA integrity_check")]
                if res != ["ok"]:
                    problems.append(f"sqlite integrity_check: {'; '.join(map(str, res[:5]))}")
                if fk := c.exec_driver_sql("PRAGMA foreign_key_check").fetchall():
                    problems.append(f"sqlite foreign_key_check: {len(fk)} row(s) point at missing rows")
            for table in (Case, Cell, AuditEvent):
                c.execute(counts.select_from(table)).scalar()
            orphans = {
                "cell(s) of a missing case":
                    counts.select_from(Cell).where(Cell.case_id.not_in(select(Case.id))),
                "audit row(s) of a missing case":
                    counts.select_from(AuditEvent).where(AuditEvent.case_id.not_in(select(Case.id))),
                "audit row(s) naming a cell that is missing or in another case":
                    counts.select_from(AuditEvent).outerjoin(Cell, Cell.id == AuditEvent.cell_id)
                    .where(AuditEvent.cell_id.is_not(None),
                           Cell.id.is_(None) | (Cell.case_id != AuditEvent.case_id)),
            }
            for what, q in orphans.items():
                if n := c.execute(q).scalar():
                    problems.append(f"{n} {what}")
            n_cells = dict(c.execute(select(Cell.case_id, func.count()).group_by(Cell.case_id)).all())
            made = {}  # case id -> (created with, added since), as the create / add-cells events stored them
            for case_id, action, n in c.execute(select(AuditEvent.case_id, AuditEvent.action, AuditEvent.n_cells)
                                                .where(AuditEvent.action.in_(("create", "add-cells")),
                                                       AuditEvent.n_cells.is_not(None))):
                created, added = made.get(case_id, (None, 0))
                made[case_id] = (n, added) if action == "create" else (created, added + n)
            for case_id, code in c.execute(select(Case.id, Case.case_code)):
                created, added = made.get(case_id, (None, 0))
                if created is not None and created + added != n_cells.get(case_id, 0):
                    more = f" and {added} added" if added else ""
                    problems.append(f"case {code!r} has {n_cells.get(case_id, 0)} cells, created with {created}{more}")
    except SQLAlchemyError as exc:
        problems.append(f"could not read the store: {exc}")
    return problems
