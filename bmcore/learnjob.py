"""Learning a candidate as a background job of the server: ``python -m train.learn --from-store`` in a process of its
own (minutes of every core; cancelling it is stopping that process), its progress in ``<folder>/status.json``, its
start, end, cancellation or refusal in ``model_events``. A reload, or another replica, reads the same state back; a
finished job's candidate is registered once (``CaseStore.end_learning``: one row per job end, unique by folder).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .db import CaseError
from .jobs import owner_alive, owner_token
from .labdata import cells_from_store, refusal_to_start, split_by_case

REPO = Path(__file__).resolve().parents[1]
LIVE_STEPS_DONE = ("done", "refused")
_PROCS: dict[int, subprocess.Popen] = {}  # the jobs this server process started: reaped once they end


def _reap() -> None:
    for pid, proc in list(_PROCS.items()):
        if proc.poll() is not None:
            del _PROCS[pid]


def candidates_dir() -> Path:
    return Path(os.environ.get("BM_CANDIDATES_DIR") or Path("data") / "candidates")


def approved_dir() -> Path:
    return Path(os.environ.get("BM_APPROVED_DIR") or Path("data") / "approved-models")


def data_summary(store, task: str) -> dict:
    """What a learning job would read now: cells, cases, per class, and why it would be refused ("" if not)."""
    from collections import Counter

    cells, source = cells_from_store(store, task, images=False)  # counts only: no thumbnail is read
    sides = split_by_case(cells, 0.2, 0.2) if cells else {}
    return {"cells": len(cells), "cases": len({c.case for c in cells}), "per_class": dict(Counter(c.label for c in cells)),
            "left_out": source["left_out"],
            "refusal": refusal_to_start(cells, sides) if cells else "no signed cell of the lab's own yet"}


def current(store) -> dict | None:
    """The latest learning job: its event, folder, step (status.json), and whether its process still runs."""
    _reap()  # an ended child of this process would otherwise linger as a zombie and look alive
    events = store.model_events()
    started = [e for e in events if e["action"] == "learn-started"]
    if not started:
        return None
    e = started[-1]
    folder = Path(e["detail"]["folder"])
    st = folder / "status.json"
    status = json.loads(st.read_text()) if st.is_file() else {"step": "starting"}
    beat = dt.datetime.fromtimestamp(st.stat().st_mtime, dt.timezone.utc).replace(tzinfo=None) if st.is_file() \
        else e["at"]
    ended = {x["detail"].get("folder") for x in events
             if x["action"] in ("learn-finished", "learn-cancelled", "learn-failed")}
    alive = owner_alive(e["detail"]["owner"], beat) and str(folder) not in ended
    return {"event": e, "folder": folder, "status": status, "running": alive and status.get("step") not in
            LIVE_STEPS_DONE, "ended": str(folder) in ended}


def start(store, actor, *, base_path: str | Path, db_url: str, extra_args: tuple = ()) -> dict:
    """Start learning from the store's signed cases (admins only); refused, with what is missing, when there is too
    little data, or while another job runs."""
    from .bundle import load_bundle

    with store.session() as s:
        u = store._authorize(s, actor, "models")
    job = current(store)
    if job and job["running"]:
        raise CaseError("a learning job is running already; wait for it or cancel it")
    base = load_bundle(base_path)
    summary = data_summary(store, base.meta["task"])
    if summary["refusal"]:
        store.log_model_event("learn-refused", u.username, user_id=u.id, detail={"reason": summary["refusal"]})
        raise CaseError(f"nothing can be learnt yet: {summary['refusal']}")
    name = f"{base.name}-lab-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
    folder = candidates_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with open(folder / "learn.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "train.learn", "--from-store", "--db", db_url, "--base",
                                 str(base.path), "--out", str(candidates_dir()), "--name", name, *extra_args],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _PROCS[proc.pid] = proc
    store.log_model_event("learn-started", u.username, user_id=u.id, name=name,
                          detail={"folder": str(folder), "owner": owner_token(proc.pid), "pid": proc.pid,
                                  "base": base.name, "base_sha256": base.sha256, "data": summary})
    return {"name": name, "folder": folder, "pid": proc.pid}


def cancel(store, actor) -> None:
    """Stop the running learning job (admins only); nothing it wrote is registered."""
    with store.session() as s:
        u = store._authorize(s, actor, "models")
    job = current(store)
    if not job or not job["running"]:
        raise CaseError("no learning job is running")
    pid = job["event"]["detail"]["pid"]
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    if pid in _PROCS:
        try:
            _PROCS.pop(pid).wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
    store.end_learning(job["folder"], "learn-cancelled", u.username, user_id=u.id, name=job["event"]["name"])


def collect(store) -> int | None:
    """Register the candidate of a job that has finished (once); returns its event id, or None."""
    job = current(store)
    if not job or job["ended"]:
        return None
    step = job["status"].get("step")
    if step == "done" and (job["folder"] / "report.json").is_file():
        # two pages may see the end at once (two admins, two replicas): the store records it, and registers, once
        return store.end_learning(job["folder"], "learn-finished", name=job["event"]["name"], register=True)
    if not job["running"] and step != "done":
        store.end_learning(job["folder"], "learn-failed", name=job["event"]["name"],
                           detail={"step": step, "reason": job["status"].get("reason", "the process stopped")})
    return None
