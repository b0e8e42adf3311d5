"""Classification as a background job, owned by the server process, not by a page's script run.

A page creates the case with one *pending* cell per readable upload (``CaseStore.create_case``), then hands
the crops to the process's one ``JobRunner``. Its worker thread classifies them in chunks, taking one chunk
of each active job in turn (fair between sessions), and saves each chunk's cells in one transaction as it
finishes (``CaseStore.save_results``), so the work survives whatever the browser does. The job's state is a
row of the store's ``jobs`` table: a server that starts finds the jobs a dead process left queued or running
and marks them *interrupted*; their cases keep their pending cells (a clearly marked partial case) until the
same files are uploaded again (``match_pending`` + ``submit`` resume exactly the missing cells; saving is
idempotent, so nothing is ever classified into a cell twice) or the case is deleted.

The queue is bounded: past ``max_cells`` waiting crops or ``max_jobs`` jobs, ``submit`` raises ``QueueFull``
with how much is ahead, instead of letting a request time out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .cases import CaseError, CaseStore, CellInput, cell_inputs, utcnow
from .schema import JOB_DONE, JOB_FAILED, JOB_RUNNING

log = logging.getLogger(__name__)
STALE_AFTER = dt.timedelta(minutes=5)  # a job of another machine with no heartbeat for this long is dead


class QueueFull(CaseError):
    """The shared classification queue is full; the message says how much is ahead."""


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks since boot
    except (OSError, IndexError):
        return ""


def owner_token(pid: int | None = None) -> str:
    """host:pid:start-time of a process: unique even when a restarted server gets the same pid."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def owner_alive(owner: str, heartbeat: dt.datetime | None) -> bool:
    """Whether the process named by ``owner`` may still be working on its job."""
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host == socket.gethostname() and pid.isdigit():
        return bool(started) and _start_time(int(pid)) == started
    return heartbeat is not None and utcnow() - heartbeat < STALE_AFTER


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pending_inputs(items) -> list[CellInput]:
    """The case rows of a batch before classification: readable crops pending, refused files unreadable at once."""
    return [CellInput(name=it.name, ok=True, pending=True, sha256=sha256(it.data()), origin=it.origin)
            if it.ok else CellInput(name=it.name, ok=False, error=it.error, origin=it.origin) for it in items]


def match_pending(case, items) -> tuple[list[tuple[int, object]], list[str]]:
    """Pair re-uploaded crops with the pending cells of a partial case (by content), for resuming its job.

    Returns ([(position, item)], names of uploads that match no pending cell).
    """
    want: dict[str, list[int]] = {}
    for c in case.cells:
        if c.pending:
            want.setdefault(c.sha256, []).append(c.position)
    pairs, extra = [], []
    for it in items:
        if not it.ok:
            extra.append(it.name)
            continue
        slots = want.get(sha256(it.data()))
        if slots:
            pairs.append((slots.pop(0), it))
        else:
            extra.append(it.name)
    return pairs, extra


@dataclass
class Added:
    """What ``JobRunner.add_to_case`` did: the new cells' positions, the (position, item) pairs queued, and why they
    were not queued ("" when they were)."""
    positions: list[int]
    work: list[tuple[int, object]]
    queue_error: str = ""


@dataclass
class _Job:
    id: int
    case_id: int
    predictor: object
    rules: object
    work: deque = field(default_factory=deque)  # (position, InputItem) still to classify
    started: bool = False


class JobRunner:
    """One per server process: a worker thread over a bounded, fair queue of classification jobs."""

    def __init__(self, store: CaseStore, *, chunk: int = 32, max_cells: int = 20000, max_jobs: int = 32):
        self.store, self.chunk, self.max_cells, self.max_jobs = store, chunk, max_cells, max_jobs
        self.owner = owner_token()
        interrupted = store.interrupt_jobs(lambda owner, hb: owner == self.owner or owner_alive(owner, hb))
        if interrupted:
            log.warning("%d classification job(s) of a stopped server were marked interrupted", len(interrupted))
        self._cv = threading.Condition()
        self._active: deque[_Job] = deque()
        self._thread = threading.Thread(target=self._loop, name="bmcore-jobs", daemon=True)
        self._thread.start()

    # -- what pages call -------------------------------------------------------------------------------
    def check_room(self, n: int) -> None:
        """Raise ``QueueFull`` (saying what is ahead) if ``n`` more crops would not fit in the queue now."""
        with self._cv:
            self._check_room(n)

    def _check_room(self, n: int) -> None:
        waiting = sum(len(j.work) for j in self._active)
        if len(self._active) >= self.max_jobs or waiting + n > self.max_cells:
            raise QueueFull(f"The server is busy: {len(self._active)} classification job(s) with {waiting} crops are "
                            f"ahead of you (room for {self.max_cells} crops in all). Nothing was started; try again "
                            "in a few minutes.")

    def submit(self, case_id: int, predictor, rules, work: list[tuple[int, object]]) -> int:
        """Queue ``work`` ([(cell position, InputItem)]) of a case; returns the job id."""
        with self._cv:
            self._check_room(len(work))
            job_id = self.store.create_job(case_id, len(work), self.owner)
            self._active.append(_Job(job_id, case_id, predictor, rules, deque(work)))
            self._cv.notify()
        return job_id

    def start_case(self, code: str, items, predictor, rules, actor, *, field_images=(), demo: bool = False) -> int:
        """Create case ``code`` of ``items`` (one pending cell per readable image; refused files unreadable at once)
        and queue its classification by ``predictor`` under ``rules``; returns the case id. What a page, a script or a
        benchmark calls: nothing is left behind on refusal (a full queue refuses before the case is created; a case
        whose job could not be queued is taken back by its creator, as nothing was done to it)."""
        work = [(i, it) for i, it in enumerate(items) if it.ok]
        self.check_room(len(work))
        cid = self.store.create_case(code, pending_inputs(items), actor=actor, model_name=predictor.bundle.name,
                                     model_sha256=predictor.bundle.sha256, model_classes=predictor.classes,
                                     rules=rules.to_dict(), inference=predictor.inference_record(),
                                     field_images=list(field_images), demo=demo)
        try:
            self.submit(cid, predictor, rules, work)
        except CaseError:
            try:
                self.store.delete_case(cid, actor)
            except CaseError:
                pass
            raise
        return cid

    def resume(self, case, items, predictor, rules) -> tuple[list[tuple[int, object]], list[str]]:
        """Queue the re-uploaded ``items`` that are missing cells of partial ``case`` (matched by content), under the
        case's own ``predictor`` and ``rules``; returns ([(position, item)] queued, names of uploads that are no
        missing cell). Raises ``CaseError`` if none is, or if the queue is full (nothing queued)."""
        pairs, extra = match_pending(case, items)
        if not pairs:
            raise CaseError("None of these files is a missing cell of this case.")
        self.submit(case.id, predictor, rules, pairs)
        return pairs, extra

    def add_to_case(self, case_id: int, items, predictor, rules, actor, *, expected_cells: int,
                    field_images=()) -> "Added":
        """Append ``items`` to an open case as pending cells and queue them under the case's own ``predictor`` and
        ``rules``. ``expected_cells``: how many cells the adder's page showed (``CaseStore.add_cells`` refuses a
        stale page). A full queue refuses before anything is added; if it fills between the two steps, the cells
        stay pending (a partial case, resumable) and ``Added.queue_error`` says why."""
        self.check_room(sum(it.ok for it in items))
        positions = self.store.add_cells(case_id, pending_inputs(items), actor=actor, expected_cells=expected_cells,
                                         field_images=list(field_images))
        work = [(pos, it) for pos, it in zip(positions, items) if it.ok]
        try:
            self.submit(case_id, predictor, rules, work)
        except CaseError as exc:
            return Added(positions, work, str(exc))
        return Added(positions, work)

    def load(self, job_id: int | None = None) -> tuple[int, int]:
        """(other jobs sharing the classifier, crops of theirs still to classify) as seen by ``job_id``."""
        with self._cv:
            others = [j for j in self._active if j.id != job_id]
            return len(others), sum(len(j.work) for j in others)

    def running(self, job_id: int) -> bool:
        with self._cv:
            return self._thread.is_alive() and any(j.id == job_id for j in self._active)

    def wait_near_end(self, job_id: int, timeout: float) -> bool:
        """If ``job_id`` has the classifier alone and at most one chunk left to start, wait (up to ``timeout`` s)
        until it leaves the queue, its end recorded; True if it has left. A page that checks once a second learns of
        the end when it comes instead of up to a second later, and waits only at the very end of a job. While jobs
        share the classifier it answers at once: 8 sessions at once were slower with the wait (docs/benchmarks.md)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                job = next((j for j in self._active if j.id == job_id), None)
                if job is None:
                    return True
                left = deadline - time.monotonic()
                if len(self._active) > 1 or len(job.work) > self.chunk or left <= 0:
                    return False
                self._cv.wait(left)

    # -- the worker ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._active:
                    self._cv.wait()
                job = self._active[0]
                self._active.rotate(-1)  # round robin: one chunk of each job in turn
                batch = [job.work.popleft() for _ in range(min(self.chunk, len(job.work)))]
            try:
                ok = self._run_chunk(job, batch)
            except BaseException:  # noqa: BLE001 -- never let the worker die with jobs in its queue
                log.exception("classification worker error")
                ok = False
            if not ok or not job.work:
                if ok:
                    self._safe_set(job.id, JOB_DONE)
                with self._cv:  # a job leaves the queue only once its end is recorded
                    if job in self._active:
                        self._active.remove(job)
                    self._cv.notify_all()  # pages waiting for its end (wait_near_end)

    def _run_chunk(self, job: _Job, batch: list) -> bool:
        try:
            if not job.started:
                job.started = True
                self.store.set_job(job.id, JOB_RUNNING)
            items = [it for _, it in batch]
            preds = job.predictor.predict_items(items, rules=job.rules, thumbnails=True)
            rows = cell_inputs(items, preds)
            self.store.save_results(job.case_id, {pos: r for (pos, _), r in zip(batch, rows)}, job_id=job.id)
            return True
        except Exception as exc:  # noqa: BLE001 -- the job fails with its reason; the server goes on
            log.error("classification job %d failed: %s", job.id, type(exc).__name__)
            self._safe_set(job.id, JOB_FAILED, f"{type(exc).__name__}: {exc}")
            return False

    def _safe_set(self, job_id: int, status: str, error: str = "") -> None:
        try:
            self.store.set_job(job_id, status, error)
        except Exception:  # noqa: BLE001 -- the worker must outlive a database hiccup
            log.error("could not record the end of classification job %d", job_id)
