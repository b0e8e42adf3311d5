"""Reviews are durable: the case store survives a killed writer and several reviewers at once.

Every test runs on SQLite and on a real PostgreSQL server. The PostgreSQL URL comes from
BM_TEST_POSTGRES_URL (e.g. ``postgresql+psycopg://bmtest:bmtest@127.0.0.1:5432/bmtest``; .ci/run
starts a throwaway server and sets it); without it those cases are skipped, unless
BM_REQUIRE_POSTGRES=1, where they fail. Each PostgreSQL test works in a schema of its own,
created for it and dropped after it: the tables of the database it points at are not touched.
"""

from __future__ import annotations

import collections
import os
import random
import re
import select as _select
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import event, func, select

from bmcore.cases import STATUS_OPEN, STATUS_SIGNED, AuditEvent, Case, CaseStore, Cell, CellInput, ConflictError
from tests.conftest import REPO, TEST_PASSWORD, actor, postgres_schema

LABELS = ["BLA", "EBO", "LYT", "NGS", "MON", "PMO"]
REVIEW_ACTIONS = ("confirm", "reclassify")
CONFLICT_MSG = re.compile(r"^#\d+ c\d\.jpg was changed by \w+ at \d\d:\d\d:\d\d UTC while you were looking at it "
                          r"\(now \w+\); reload it and try again$")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A URL to an empty case database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cases.db'}"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def stores(db_url):
    """open(): a new CaseStore (its own engine and connections) on the test database; all disposed after."""
    opened = []

    def open_store() -> CaseStore:
        opened.append(CaseStore(db_url))
        return opened[-1]

    yield open_store
    for s in opened:
        s.engine.dispose()


def _review_events(store: CaseStore, case_id: int | None = None) -> dict[int, list[AuditEvent]]:
    """Review audit events per cell id, in the order they were written."""
    q = select(AuditEvent).where(AuditEvent.action.in_(REVIEW_ACTIONS)).order_by(AuditEvent.id)
    if case_id is not None:
        q = q.where(AuditEvent.case_id == case_id)
    out = collections.defaultdict(list)
    with store.session() as s:
        for e in s.scalars(q):
            out[e.cell_id].append(e)
        s.expunge_all()
    return out


def _check_chains(store: CaseStore, events: dict[int, list[AuditEvent]], cells: list[Cell]) -> None:
    """Each cell's review events form a chain from the model's label to the stored label, one per version."""
    for cell in cells:
        evs = events.get(cell.id, [])
        froms = [e.from_value for e in evs]
        tos = [e.to_value for e in evs]
        assert froms == ([cell.predicted] + tos)[:len(evs)], f"audit chain of {cell.name} broken: {evs}"
        assert cell.final_label == (tos[-1] if tos else None), cell.name
        assert cell.reviewed_by == (evs[-1].who if evs else None), cell.name
        assert cell.version == 1 + len(evs), f"{cell.name}: version {cell.version} after {len(evs)} reviews"
    assert set(events) <= {c.id for c in cells}, "review events for cells that do not exist"


# -- 1. a writer killed at random moments -------------------------------------------------------------

def _run_writer_until_killed(url: str, journal, rnd: int, seed: int, rng: random.Random) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.durability_writer", url, str(journal), str(rnd), str(seed)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # a guard against a hung writer, not a timing assertion
        readable, _, _ = _select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if readable else ""
        assert line.strip() == "ready", f"writer did not start: {line!r}"
        time.sleep(rng.uniform(0.3, 1.5))
        assert proc.poll() is None, "writer stopped by itself"
    except AssertionError:
        proc.kill()
        raise AssertionError(proc.communicate()[1]) from None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()


def _read_journal(path) -> tuple[dict[str, int], list[tuple[int, str]]]:
    cases, reviews = {}, []
    text = path.read_text() if path.exists() else ""
    for line in text.split("\n")[:-1]:  # only whole lines: the last piece is "" or a torn line
        kind, a, b = line.split()
        if kind == "case":
            cases[a] = int(b)
        else:
            reviews.append((int(a), b))
    return cases, reviews


def test_killed_writer_loses_nothing_committed(stores, db_url, tmp_path):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    journal = tmp_path / "journal.txt"
    kills = 4
    for rnd in range(kills):
        _run_writer_until_killed(db_url, journal, rnd, rng.randrange(2**32), rng)

    store = stores()
    j_cases, j_reviews = _read_journal(journal)
    assert j_cases and j_reviews, "the writer committed nothing before it was killed"
    with store.session() as s:
        cases = {c.case_code: c for c in s.scalars(select(Case))}
        cells = list(s.scalars(select(Cell).order_by(Cell.id)))
        creates = {e.case_id: e for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "create"))}
        orphan_cells = s.scalar(select(func.count()).select_from(Cell).where(Cell.case_id.not_in(select(Case.id))))
        s.expunge_all()

    # every journaled case is there, whole; no case in the database is half written
    by_case = collections.defaultdict(list)
    for c in cells:
        by_case[c.case_id].append(c)
    assert orphan_cells == 0
    for code, n in j_cases.items():
        assert code in cases, f"committed case {code} is missing (seed {seed})"
        assert len(by_case[cases[code].id]) == n, f"case {code}: {len(by_case[cases[code].id])} of {n} cells"
    for code, case in cases.items():
        assert case.id in creates, f"case {code} has no 'create' audit event: half written"
        note = creates[case.id].note
        n = int(re.match(r"(\d+) cells;", note).group(1))
        assert sorted(c.position for c in by_case[case.id]) == list(range(n)), f"case {code} is half written"

    # every journaled review is in the audit trail, in order, and the cell holds the last audited label; a
    # review committed just before a kill has no journal line but can precede later journaled reviews of the
    # same cell, so the journal must be an ordered subsequence of the audit (the extras are counted below)
    events = _review_events(store)
    journaled = collections.defaultdict(list)
    for cell_id, label in j_reviews:
        journaled[cell_id].append(label)
    for cell_id, labels in journaled.items():
        audited = iter(e.to_value for e in events.get(cell_id, []))
        assert all(any(a == lab for a in audited) for lab in labels), \
            f"cell {cell_id}: journal {labels} is not in the audit {[e.to_value for e in events[cell_id]]} (seed {seed})"
    _check_chains(store, events, cells)

    # at most the one commit in flight at each kill is in the database without a journal line
    unjournaled = (len(cases) - len(j_cases)) + (sum(map(len, events.values())) - len(j_reviews))
    assert 0 <= unjournaled <= kills
    assert store.integrity_ok(), store.integrity_problems()

    # and the store still takes writes after the crashes
    cid = store.create_case("AFTER", [CellInput("x.jpg", True, predicted="BLA")], actor=actor(store, "t"))
    store.review_cell(store.get_case(cid).cells[0].id, actor(store, "t"), "LYT")
    assert store.get_case(cid).cells[0].label == "LYT"
    print(f"\n[{db_url.split(':')[0]}] {kills} kills; verified {len(j_cases)} journaled cases "
          f"({len(cases)} in db), {len(j_reviews)} journaled reviews ({sum(map(len, events.values()))} audited), "
          f"{unjournaled} in flight at a kill; seed {seed}")


def test_integrity_check_finds_half_written_cases_and_stray_audit_rows(stores):
    store = stores()
    cid = store.create_case("HALF", [CellInput(f"c{k}.jpg", True, predicted="BLA") for k in range(3)],
                             actor=actor(store, "t"))
    assert store.integrity_problems() == []
    with store.engine.begin() as c:  # what a non-atomic create or a stray write would leave behind
        c.execute(Cell.__table__.delete().where(Cell.case_id == cid, Cell.position == 2))
        c.execute(AuditEvent.__table__.insert().values(case_id=cid, cell_id=10**6, who="x", action="confirm"))
    problems = store.integrity_problems()
    assert not store.integrity_ok()
    assert "case 'HALF' has 2 cells, created with 3" in problems
    assert "1 audit row(s) naming a cell that is missing or in another case" in problems



def test_the_integrity_check_reads_stored_counts_and_an_older_database_gets_them_from_its_notes_once(tmp_path):
    """The count a create / add-cells event put in the case is a column (``audit.n_cells``), not text parsed out of
    a note: a note says what it likes and the check still holds. A database of the version before the column is
    migrated once from its notes, and then a half-written case is still found."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = CaseStore(url)
    cid = store.create_case("OLD", [CellInput(f"c{k}.jpg", True, predicted="BLA") for k in range(3)],
                            actor=actor(store, "t"))
    store.add_cells(cid, [CellInput("d.jpg", True, pending=True)], actor=actor(store, "t"), expected_cells=3)
    with store.engine.begin() as c:  # a note reworded later does not change what was counted
        c.execute(AuditEvent.__table__.update().values(note="reworded"))
    assert store.integrity_problems() == []
    with store.engine.begin() as c:  # the previous version: counts in the notes only
        c.exec_driver_sql("ALTER TABLE audit DROP COLUMN n_cells")
        c.exec_driver_sql("UPDATE audit SET note = '3 cells; model m' WHERE action = 'create'")
        c.exec_driver_sql("UPDATE audit SET note = '1 cells: #4' WHERE action = 'add-cells'")
        c.execute(Cell.__table__.delete().where(Cell.case_id == cid, Cell.position == 0))
    store.engine.dispose()
    upgraded = CaseStore(url)
    with upgraded.session() as s:
        assert sorted(e.n_cells for e in s.scalars(select(AuditEvent).where(AuditEvent.case_id == cid))
                      if e.n_cells is not None) == [1, 3]
    assert upgraded.integrity_problems() == ["case 'OLD' has 3 cells, created with 3 and 1 added"]

# -- 2. eight reviewers on one case ---------------------------------------------------------------------

def test_eight_reviewers_on_one_case_lose_no_update(stores, db_url):
    writers, lockstep_rounds, free_attempts = 8, 8, 15
    setup = stores()
    cid = setup.create_case("MULTI", [CellInput(f"c{k}.jpg", True, predicted="BLA") for k in range(4)],
                            actor=actor(setup, "t"))
    cell_ids = [c.id for c in setup.get_case(cid).cells]
    mine = [stores() for _ in range(writers)]  # each reviewer has its own engine and connections
    signed_in = {f"r{w}": actor(mine[w], f"r{w}", "technologist") for w in range(writers)}
    barrier = threading.Barrier(writers)
    tally = collections.Counter()
    lockstep_ok = collections.Counter()
    messages, errors = [], []
    lock = threading.Lock()

    def attempt(store: CaseStore, who: str, cell_id: int, label: str, phase: str, load_then_wait: bool) -> None:
        cell = next(c for c in store.get_case(cid).cells if c.id == cell_id)  # what the reviewer sees
        if load_then_wait:
            barrier.wait()  # everyone has loaded the same version before anyone writes
        try:
            store.review_cell(cell_id, signed_in[who], label, expected_version=cell.version)
            outcome = "ok"
        except ConflictError as exc:
            outcome = "conflict"
            with lock:
                messages.append(str(exc))
        except Exception as exc:  # a raw driver/ORM error, "database is locked"...: a failure
            outcome = "error"
            with lock:
                errors.append(repr(exc))
        with lock:
            tally[outcome] += 1
            if phase == "lockstep" and outcome == "ok":
                lockstep_ok[cell_id] += 1

    def reviewer(w: int) -> None:
        store, rng = mine[w], random.Random(w)
        try:
            for r in range(lockstep_rounds):  # all eight on the same cell at once
                attempt(store, f"r{w}", cell_ids[r % len(cell_ids)], rng.choice(LABELS), "lockstep", True)
                barrier.wait()
            for _ in range(free_attempts):  # then each at its own pace on random cells
                attempt(store, f"r{w}", rng.choice(cell_ids), rng.choice(LABELS), "free", False)
        except threading.BrokenBarrierError:
            pass
        except Exception as exc:
            with lock:
                errors.append(repr(exc))
            barrier.abort()

    threads = [threading.Thread(target=reviewer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    attempts = writers * (lockstep_rounds + free_attempts)
    assert errors == []
    assert tally["ok"] + tally["conflict"] == attempts
    # in each lockstep round all eight held the same version: exactly one write wins
    assert sum(lockstep_ok.values()) == lockstep_rounds
    assert tally["conflict"] >= lockstep_rounds * (writers - 1)
    assert all(CONFLICT_MSG.match(m) for m in messages), [m for m in messages if not CONFLICT_MSG.match(m)][:3]

    events = _review_events(setup, cid)
    assert sum(map(len, events.values())) == tally["ok"], "audit events != successful writes"
    _check_chains(setup, events, setup.get_case(cid).cells)
    assert setup.integrity_ok(), setup.integrity_problems()
    print(f"\n[{db_url.split(':')[0]}] {writers} writers, {attempts} attempts: {tally['ok']} written, "
          f"{tally['conflict']} conflicts")


# -- the race inside one call: someone commits between the version check and the write ----------------

def _between_check_and_write(store: CaseStore, fn) -> None:
    """Run fn (a commit through another store) when `store` is about to write its next change."""
    fired = []

    def hook(session, *_):
        # the change itself, not a sign-in's bookkeeping; once (a listener cannot remove itself while it runs)
        if not fired and any(isinstance(o, (Case, Cell)) for o in session.dirty):
            fired.append(1)
            fn()

    event.listen(store._Session, "before_flush", hook)


def _reviewed_case(store: CaseStore) -> tuple[int, list[int]]:
    cid = store.create_case("RACE", [CellInput(f"c{k}.jpg", True, predicted="BLA") for k in range(3)],
                            actor=actor(store, "t"))
    ids = [c.id for c in store.get_case(cid).cells]
    for i in ids:
        store.review_cell(i, actor(store, "t"), "BLA")
    return cid, ids


def test_review_racing_a_review_is_a_conflict(stores):
    amy, bob = stores(), stores()
    actor(amy, "amy", "pathologist"), actor(bob, "bob", "pathologist")  # signed in before the race is set up
    cid, ids = _reviewed_case(amy)
    cell = amy.get_case(cid).cells[0]
    _between_check_and_write(bob, lambda: amy.review_cell(cell.id, actor(amy, "amy"), "LYT"))
    with pytest.raises(ConflictError) as exc:  # passes the version check, loses at the write
        bob.review_cell(cell.id, actor(bob, "bob"), "EBO", expected_version=cell.version)
    assert CONFLICT_MSG.match(str(exc.value)) and "changed by amy" in str(exc.value) and "(now LYT)" in str(exc.value)
    after = amy.get_case(cid).cells[0]
    assert after.final_label == "LYT" and after.reviewed_by == "amy"
    assert [e.who for e in _review_events(amy, cid)[cell.id]] == ["t", "amy"]


def test_review_racing_sign_off_is_a_conflict(stores):
    amy, bob = stores(), stores()
    actor(amy, "amy", "pathologist"), actor(bob, "bob", "pathologist")  # signed in before the race is set up
    cid, ids = _reviewed_case(amy)
    _between_check_and_write(bob, lambda: amy.sign_off(cid, actor(amy, "amy"), password=TEST_PASSWORD, no_specimen_id=True, under_target=True))
    with pytest.raises(ConflictError, match="signed off"):  # saw an open case, writes after the sign-off
        bob.review_cell(ids[1], actor(bob, "bob"), "EBO")
    case = amy.get_case(cid)
    assert case.status == STATUS_SIGNED and [c.label for c in case.cells] == ["BLA"] * 3
    assert [e["action"] for e in amy.audit(cid)][-1] == "sign-off"


def test_sign_off_racing_a_review_is_a_conflict(stores):
    amy, bob = stores(), stores()
    actor(amy, "amy", "pathologist"), actor(bob, "bob", "pathologist")  # signed in before the race is set up
    cid, ids = _reviewed_case(amy)
    version = amy.get_case(cid).version
    _between_check_and_write(bob, lambda: amy.review_cell(ids[2], actor(amy, "amy"), "EBO"))
    with pytest.raises(ConflictError, match="reload and try again"):  # would sign a state bob never saw
        bob.sign_off(cid, actor(bob, "bob"), password=TEST_PASSWORD, expected_version=version, no_specimen_id=True, under_target=True)
    case = amy.get_case(cid)
    assert case.status == STATUS_OPEN and case.cells[2].label == "EBO"
    bob.sign_off(cid, actor(bob, "bob"), password=TEST_PASSWORD, no_specimen_id=True, under_target=True)  # after reloading it works
    assert amy.get_case(cid).status == STATUS_SIGNED


def test_sign_off_racing_a_sign_off_is_a_conflict(stores):
    amy, bob = stores(), stores()
    actor(amy, "amy", "pathologist"), actor(bob, "bob", "pathologist")  # signed in before the race is set up
    cid, _ = _reviewed_case(amy)
    _between_check_and_write(bob, lambda: amy.sign_off(cid, actor(amy, "amy"), password=TEST_PASSWORD, no_specimen_id=True, under_target=True))
    with pytest.raises(ConflictError, match="signed off by amy"):
        bob.sign_off(cid, actor(bob, "bob"), password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    assert amy.get_case(cid).signed_by == "amy"
    assert [e["action"] for e in amy.audit(cid)].count("sign-off") == 1


def test_long_values_never_raise_a_raw_database_error(stores, db_url):
    """A ZIP member name longer than the column is stored truncated (full name audited) on both backends; a value
    the schema cannot take is a readable refusal on PostgreSQL (it enforces lengths), never a driver error."""
    from bmcore.cases import StoreError

    store = stores()
    long = "m" * 400 + ".jpg"
    cid = store.create_case("LONG", [CellInput(long, True, predicted="BLA")], actor=actor(store, "t"))
    cell = store.get_case(cid).cells[0]
    assert len(cell.name) == 300 and cell.name.endswith(".jpg")
    assert f"full file name: {long}" in [e["note"] for e in store.audit(cid)]
    store.review_cell(cell.id, actor(store, "t"), "LYT", expected_version=cell.version)
    if db_url.startswith("postgresql"):
        with pytest.raises(StoreError, match="did not save"):
            store.create_case("BAD", [CellInput("x.jpg", True, predicted="X" * 20)], actor=actor(store, "t"))
        assert store.case_id("BAD") is None
    assert store.integrity_ok()
