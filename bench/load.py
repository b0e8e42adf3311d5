"""Load benchmark: N users at once on one app server, each classifying K real crops and opening heatmaps.

    .venv/bin/python bench/load.py --sessions 8 --crops 100 --heatmaps 3 --out bench/results/load.json

Starts ``streamlit run app.py`` (headless, loopback, a free port, a throw-away SQLite database; with ``--replicas 2``
two replicas by deploy/replica.sh on a throw-away schema of ``--database``, a PostgreSQL, behind Debian's nginx
from deploy/nginx.conf, the sessions pinned to replica 1 and 2 in turn by its sticky cookie) and drives it
from N threads, each with its own headless chromium and browser context, so each is its own Streamlit session.
Every session opens Classify and enters its case id (LOAD-01, LOAD-02, ...); then all of them at once upload K
crops (a deterministic sample per session, disjoint between sessions while the data allows, round-robin over
the classes of ../shared/data/bm-dev), press Classify and wait for the complete results; then each opens the
Cell view and picks H other cells one after another (spread over its upload; a cell the page does not offer,
e.g. one the model's gate rejected, is replaced by the next). Page steps live in bench/appdriver.py, shared with
tests/test_e2e_browser.py. One chromium per session because Playwright's sync API is bound to its thread.

Per session: completed or the error; upload -> complete results (file upload + Classify, until the page has
finished drawing the case); each heatmap (choose the cell -> the crop and its Grad-CAM are on screen: a full
rerun of the page, which is what the user waits for). The server's resident memory (the streamlit process and its
children) is sampled every 0.5 s. Writes JSON, prints a table; exit status 1 if any session failed. Speed is
not asserted. The browsers run on the same machine as the server and take CPU from it: on a small machine
the figures are an upper bound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import appdriver  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "bm-dev"
SAMPLE_EVERY_S = 0.5


# -- data -----------------------------------------------------------------------------------------
def pick_crops(root: Path, sessions: int, k: int, seed: int = 0) -> tuple[list[list[Path]], bool]:
    """K crops per session, round-robin over the classes; each class shuffled once (seeded), sessions take
    consecutive slices, so they are disjoint until a class runs out (then it wraps). Returns (samples, disjoint)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.jpg")))
    if not classes:
        raise SystemExit(f"no class folders with .jpg crops under {root}")
    pools = {}
    for c in classes:
        files = sorted((root / c).glob("*.jpg"))
        random.Random(f"{seed}-{c}").shuffle(files)
        pools[c] = files
    per = -(-k // len(classes))
    out = []
    for s in range(sessions):
        out.append([pools[c][(s * per + i // len(classes)) % len(pools[c])]
                    for i, c in ((i, classes[i % len(classes)]) for i in range(k))])
    disjoint = len({f for files in out for f in files}) == sessions * k
    return out, disjoint


def heatmap_cells(files: list[Path], n: int) -> list[str]:
    """Cells to open, in order: n spread over the upload, then the rest as stand-ins for any the page does not
    offer (a crop rejected by the model's gate gets no heatmap). Never the first: the Cell view opens on it."""
    spread = sorted({min(len(files) - 1, (j + 1) * len(files) // (n + 1)) for j in range(n)} - {0})
    return [files[i].name for i in spread + [i for i in range(1, len(files)) if i not in spread]]


# -- server memory --------------------------------------------------------------------------------
def proc_table() -> dict[int, tuple[int, float, int, str]]:
    """Every live process from /proc: pid -> (parent pid, CPU seconds used (user + system), resident bytes, command)."""
    hz, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            rss = int(Path(f"/proc/{d}/statm").read_text().split()[1]) * page
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        f = stat[stat.rfind(")") + 2:].split()
        out[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / hz, rss, cmd)
    return out


def process_tree(pid: int, table: dict) -> set[int]:
    """``pid`` and all its descendants in a ``proc_table``."""
    children: dict[int, list[int]] = {}
    for p, row in table.items():
        children.setdefault(row[0], []).append(p)
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p in table and p not in tree:
            tree.add(p)
            todo += children.get(p, [])
    return tree


def tree_rss(pid: int | list[int]) -> int:
    """Resident bytes of a process and all its descendants (of several: all of them together)."""
    table = proc_table()
    return sum(table[p][2] for p in set().union(*(process_tree(q, table) for q in _pids(pid))))


def _pids(pid: int | list[int]) -> list[int]:
    return [pid] if isinstance(pid, int) else list(pid)


def cpu_by_group(server_pid: int | list[int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by live processes, grouped: the server (with its children), the
    browsers (chromium) and the rest (this script, Playwright's drivers, anything else on the machine); plus the
    machine's idle seconds (/proc/stat). Differences between two calls say who took the cores in between."""
    table = proc_table()
    server = set().union(*(process_tree(q, table) for q in _pids(server_pid)))
    out = {"server": 0.0, "browsers": 0.0, "other": 0.0}
    for pid, (_, cpu, _, cmd) in table.items():
        out["server" if pid in server else "browsers" if "chrom" in cmd else "other"] += cpu
    try:
        out["machine_idle"] = int(Path("/proc/stat").read_text().split("\n")[0].split()[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        pass
    return out


class RssSampler(threading.Thread):
    def __init__(self, pid: int | list[int], every: float = SAMPLE_EVERY_S):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.samples = pid, every, 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = tree_rss(self.pid)
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


# -- one user -------------------------------------------------------------------------------------
def session(n: int, url: str, files: list[Path], heat: list[str], n_heat: int, timeout: float,
            barrier: threading.Barrier, art: Path, have_results=lambda: None, have_uploaded=lambda: None,
            replica: int | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    code = f"LOAD-{n:02d}"
    rec = {"session": n, "case": code, "completed": False, "error": None, "ready_s": None, "upload_s": None,
           "classify_s": None, "results_s": None, "heatmaps": [], "cells_not_offered": [], "metrics": {}, "cells": {}}
    arrived = False

    def arrive():  # every session reaches the start line once, even one that failed on the way
        nonlocal arrived
        if not arrived:
            arrived = True
            try:
                barrier.wait(timeout)
            except threading.BrokenBarrierError:
                pass

    page = None
    try:
        with sync_playwright() as pw:
            browser = appdriver.launch(pw)
            try:
                page = appdriver.new_page(browser, timeout)
                if replica:  # behind deploy/nginx.conf: this session on that replica
                    appdriver.pin_replica(page, url, replica)
                t = time.perf_counter()
                appdriver.open_classify(page, url, code)
                rec["ready_s"] = time.perf_counter() - t
                arrive()
                t = time.perf_counter()
                appdriver.upload(page, files)
                rec["upload_s"] = time.perf_counter() - t
                have_uploaded()
                t1 = time.perf_counter()
                rec["metrics"] = appdriver.classify(page, code)
                rec["classify_s"] = time.perf_counter() - t1
                rec["results_s"] = time.perf_counter() - t
                have_results()
                rec["cells"] = cell_counts(rec["metrics"])
                missing = _unaccounted(rec["metrics"], len(files))
                if missing:
                    raise RuntimeError(missing)
                appdriver.open_cell_view(page)
                for name in heat:
                    if len(rec["heatmaps"]) == n_heat:
                        break
                    seconds = appdriver.show_heatmap(page, name)
                    if seconds is None:
                        rec["cells_not_offered"].append(name)
                    else:
                        rec["heatmaps"].append({"cell": name, "seconds": seconds})
                if len(rec["heatmaps"]) < n_heat:
                    raise RuntimeError(f"only {len(rec['heatmaps'])} of {n_heat} heatmaps: the Cell view offers too "
                                       f"few cells (not offered: {rec['cells_not_offered']})")
                rec["completed"] = True
            except Exception as exc:
                rec["error"] = _describe(exc)
                if page is not None:
                    try:
                        page.screenshot(path=str(art / f"session-{n:02d}-error.png"), full_page=True, timeout=10_000)
                    except Exception:
                        pass
            finally:
                browser.close()
    except Exception as exc:  # the browser did not start
        rec["error"] = rec["error"] or _describe(exc)
    finally:
        arrive()
    return rec


def cell_counts(metrics: dict[str, str]) -> dict[str, int]:
    """The case's metrics as counts: classified, rejected by the model's gate, unreadable."""
    def num(labels):  # a tile reads "94" or "94 of 100" (of the case's crops)
        return sum(int(m.group(1)) for lb in labels if (m := re.match(r"(\d+)( of \d+)?$", metrics[lb])))

    return {"classified": num([lb for lb in metrics if lb == "Cells classified"]),
            "rejected": num([lb for lb in metrics if re.search(r"reject|not judged", lb, re.I)]),
            "unreadable": num([lb for lb in metrics if lb == "Unreadable files"])}


def _unaccounted(metrics: dict[str, str], k: int) -> str:
    """'' when every uploaded crop is on the page: classified, rejected by the gate or listed as unreadable."""
    n = sum(cell_counts(metrics).values())
    return "" if n == k else f"{n} of {k} crops accounted for on the page: {metrics}"


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[:8])


# -- report ---------------------------------------------------------------------------------------
def cpu_account(mark: dict, start: str = "", end: str = "_end") -> dict | None:
    """Who took the cores between two marks (default: from the start line until the last session had its results):
    CPU seconds, and shares of the cores' time; None when not every session got there."""
    if f"cpu{start}" not in mark or f"cpu{end}" not in mark:
        return None
    a, b = mark[f"cpu{start}"], mark[f"cpu{end}"]
    wall = mark[f"t{end}"] - mark[f"t{start}"]
    used = {k: round(b[k] - a[k], 1) for k in ("server", "browsers", "other")}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {"wall_s": round(wall, 2), "cores": cores, "cpu_s": used,
           "share_of_cores": {k: round(v / (wall * cores), 3) for k, v in used.items()}}
    if "machine_idle" in a and "machine_idle" in b:
        out["idle_share"] = round((b["machine_idle"] - a["machine_idle"]) / (wall * cores), 3)
    return out


def pct(xs: list[float], q: float) -> float | None:
    """Percentile with linear interpolation (numpy's default); None for no data."""
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(xs: list[float]) -> dict:
    r = lambda v: None if v is None else round(v, 3)  # noqa: E731
    return {"n": len(xs), "median": r(statistics.median(xs) if xs else None), "p95": r(pct(xs, 0.95)),
            "max": r(max(xs) if xs else None)}


def machine(env: dict) -> dict:
    mem = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = re.search(r"^MemTotal:\s*(\d+) kB", mem, re.M)
    try:  # the server's torch threads: a fresh interpreter with the server's environment
        threads = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                     env=env, capture_output=True, text=True, timeout=120).stdout.strip())
    except (subprocess.SubprocessError, ValueError):
        threads = None
    from bmcore.bench import cpu_model

    return {"cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "memory_gb": round(int(total[1]) / 2**20, 1) if total else None,
            "torch_threads": threads, "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
            "platform": platform.platform(), "python": platform.python_version()}


def git_commit() -> dict:
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def table(res: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    rows = [f"{'session':<9}{'status':<8}{'classified':>11}{'rejected':>9}{'upload→results s':>18}{'heatmaps s':>20}"]
    for s in res["per_session"]:
        heat = ", ".join(f"{h['seconds']:.1f}" for h in s["heatmaps"]) or "-"
        c = s["cells"]
        rows.append(f"{s['case']:<9}{'ok' if s['completed'] else 'ERROR':<8}{c.get('classified', '-'):>11}"
                    f"{c.get('rejected', '-'):>9}{f(s['results_s']):>18}{heat:>20}")
    t, h = res["time_to_results_s"], res["heatmap_s"]
    g = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    rows += ["",
             f"{res['completed_sessions']}/{res['sessions']} sessions completed, "
             f"{res['crops_per_session']} crops each, "
             f"{len(res['errors'])} error(s)",
             f"upload -> results: median {g(t['median'])} s, p95 {g(t['p95'])} s, max {g(t['max'])} s",
             f"heatmap:           median {g(h['median'])} s, p95 {g(h['p95'])} s, max {g(h['max'])} s (n={h['n']})",
             f"server RSS peak {res['peak_server_rss_mb']} MB (before the uploads: {res['server_rss_before_mb']} MB)"]
    for key, what in (("cpu_until_all_results", "start line to the last results"),
                      ("cpu_until_all_uploaded", "  of which: to the last upload"),
                      ("cpu_uploaded_to_all_results", "  then: to the last results")):
        if c := res.get(key):
            sh, s_ = c["share_of_cores"], c["cpu_s"]
            rows.append(f"the {c['cores']} cores, {what} ({c['wall_s']:.1f} s): server {sh['server']:.0%} "
                        f"({s_['server']:.1f} CPU-s), browsers {sh['browsers']:.0%} ({s_['browsers']:.1f} CPU-s), "
                        f"other {sh['other']:.0%}, idle {c.get('idle_share', float('nan')):.0%}")
    for e in res["errors"]:
        lines = e["error"].splitlines()
        step = next((ln.strip(" -") for ln in lines if ln.strip().startswith("- ")), "")  # Playwright's call log
        who = f"LOAD-{e['session']:02d}" if e["session"] else "server"
        rows.append(f"  {who}: {lines[0][:200]}" + (f" ({step[:160]})" if step else ""))
    return "\n".join(rows)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# -- main -----------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=8, help="concurrent browser sessions (default 8)")
    ap.add_argument("--crops", type=int, default=100, help="crops uploaded by each session (default 100)")
    ap.add_argument("--heatmaps", type=int, default=3, help="cells whose heatmap each session opens (default 3)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "load.json"), help="JSON results file")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds any one step of a session may take")
    ap.add_argument("--data", default=str(DATA), help="crop root, one folder per class")
    ap.add_argument("--replicas", type=int, choices=(1, 2), default=1,
                    help="2: two replicas (deploy/replica.sh) behind nginx (deploy/nginx.conf) on --database, the "
                         "sessions alternating between them")
    ap.add_argument("--database", default=None,
                    help="SQLAlchemy URL of the shared database (needed with --replicas 2: a PostgreSQL; default "
                         "BM_TEST_POSTGRES_URL); one replica: a throw-away SQLite file")
    a = ap.parse_args()
    a.database = a.database or (os.environ.get("BM_TEST_POSTGRES_URL") if a.replicas == 2 else None)
    if a.replicas == 2 and not (a.database or "").startswith("postgresql"):
        ap.error("--replicas 2 needs --database postgresql+psycopg://... (or BM_TEST_POSTGRES_URL)")
    if a.sessions < 1 or a.crops < 1 or not 0 <= a.heatmaps < a.crops:
        ap.error("--sessions and --crops must be >= 1, --heatmaps between 0 and --crops - 1")
    why = appdriver.browser_missing() or (appdriver.nginx_missing() if a.replicas == 2 else None)
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    samples, disjoint = pick_crops(Path(a.data), a.sessions, a.crops)
    heat = [heatmap_cells(files, a.heatmaps) for files in samples]

    signal.signal(signal.SIGTERM, _interrupt)  # a cancelled job cleans up like Ctrl-C
    tmp = Path(tempfile.mkdtemp(prefix="bm-load-"))
    database = a.database or tmp / "load.db"
    env = dict(os.environ, BM_DATABASE_URL=appdriver.db_url(database))
    started = datetime.now(timezone.utc)
    info = {"machine": machine(env)}
    mark: dict = {}
    records: list[dict | None] = [None] * a.sessions
    ok = False
    try:
        with contextlib.ExitStack() as stack:
            if a.replicas == 1:
                servers = [stack.enter_context(appdriver.app_server(database, tmp / "streamlit.log",
                                                                    port=a.port or None))]
                url = servers[0].url
            else:
                database = stack.enter_context(appdriver.fresh_schema(a.database))  # its own tables, dropped after
                ports = (appdriver.free_port(), appdriver.free_port())
                url, _ = stack.enter_context(appdriver.proxy(tmp / "nginx", ports))
                appdriver.add_users(database)
                servers = [stack.enter_context(appdriver.app_server(
                    database, tmp / f"streamlit{i + 1}.log", port=p, launcher=appdriver.REPLICA, users=None,
                    env_extra={"BM_CANDIDATES_DIR": str(tmp / "candidates"), "BM_APPROVED_DIR": str(tmp / "approved")}))
                    for i, p in enumerate(ports)]
            pids = [srv.proc.pid for srv in servers]
            sampler = RssSampler(pids)
            sampler.start()

            def at_start():  # runs once, when every session has its Classify page open
                mark["t"] = time.perf_counter()
                mark["rss"] = tree_rss(pids)
                mark["cpu"] = cpu_by_group(pids)

            done_lock = threading.Lock()

            def have_uploaded():  # each session, once its upload is on the server: the last one ends the upload phase
                with done_lock:
                    mark["uploads"] = mark.get("uploads", 0) + 1
                    if mark["uploads"] == a.sessions and "cpu" in mark:
                        mark["cpu_up"], mark["t_up"] = cpu_by_group(pids), time.perf_counter()

            def have_results():  # each session, once its results are drawn: the last one closes the CPU account
                with done_lock:
                    mark["results"] = mark.get("results", 0) + 1
                    if mark["results"] == a.sessions and "cpu" in mark:
                        mark["cpu_end"], mark["t_end"] = cpu_by_group(pids), time.perf_counter()

            barrier = threading.Barrier(a.sessions, action=at_start)

            def worker(i):
                records[i] = session(i + 1, url, samples[i], heat[i], a.heatmaps, a.timeout, barrier, tmp,
                                     have_results, have_uploaded, replica=i % 2 + 1 if a.replicas == 2 else None)

            threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.sessions)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            load_wall = time.perf_counter() - mark["t"] if "t" in mark else None
            sampler.stop()
            rss_end = tree_rss(pids)
            peak = max(sampler.peak, rss_end, mark.get("rss", 0))
            server_exit = next((srv.proc.poll() for srv in servers if srv.proc.poll() is not None), None)  # None: up
        recs = [r or {"session": i + 1, "case": f"LOAD-{i + 1:02d}", "completed": False, "error": "no result",
                      "results_s": None, "heatmaps": [], "cells_not_offered": [], "metrics": {}, "cells": {}}
                for i, r in enumerate(records)]
        mb = lambda b: round(b / 2**20, 1) if b else None  # noqa: E731
        # privacy: how many uploaded file names and case ids reached the server's log output (goal: none)
        log_text = "\n".join(f.read_text(errors="replace") for f in sorted(tmp.glob("streamlit*.log")))
        private = {f"LOAD-{i + 1:02d}" for i in range(a.sessions)} | {p.name for s in samples for p in s}
        leaked = sorted(x for x in private if x in log_text)
        res = {
            "sessions": a.sessions, "replicas": a.replicas,
            "database": "PostgreSQL (shared), nginx in front (deploy/nginx.conf)" if a.replicas == 2 else "SQLite",
            "crops_per_session": a.crops, "heatmaps_per_session": a.heatmaps,
            "completed_sessions": sum(r["completed"] for r in recs),
            "errors": [{"session": r["session"], "error": r["error"]} for r in recs if r["error"]]
            + ([{"session": 0, "error": f"the server exited during the run (status {server_exit}); see its log"}]
               if server_exit is not None else []),
            "time_to_results_s": summary([r["results_s"] for r in recs if r["completed"]]),
            "heatmap_s": summary([h["seconds"] for r in recs if r["completed"] for h in r["heatmaps"]]),
            "cells": {k: sum(r["cells"].get(k, 0) for r in recs) for k in ("classified", "rejected", "unreadable")},
            "names_or_case_ids_in_server_log": len(leaked), "server_log_lines": len(log_text.splitlines()),
            "peak_server_rss_mb": mb(peak), "server_rss_before_mb": mb(mark.get("rss")),
            "server_rss_end_mb": mb(rss_end), "rss_samples": sampler.samples, "rss_sample_every_s": SAMPLE_EVERY_S,
            "wall_s": round(wall, 2), "load_wall_s": None if load_wall is None else round(load_wall, 2),
            "data": Path(a.data).name, "samples_disjoint": disjoint,
            "cpu_until_all_results": cpu_account(mark),
            # the same window in two: until every upload is on the server, then until every session has its results
            "cpu_until_all_uploaded": cpu_account(mark, end="_up"),
            "cpu_uploaded_to_all_results": cpu_account(mark, start="_up"),
            "per_session": [{**r, **{k: round(r[k], 3) for k in ("ready_s", "upload_s", "classify_s", "results_s")
                                     if r.get(k) is not None},
                             "heatmaps": [{"cell": h["cell"], "seconds": round(h["seconds"], 3)}
                                          for h in r["heatmaps"]]}
                            for r in recs],
            **info, "git": git_commit(), "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
            "started_utc": started.isoformat(timespec="seconds"),
            "notes": "time_to_results_s: file upload + Classify until the page has drawn the case; heatmap_s: choose "
                     "a cell in Cell view until its crop and Grad-CAM are shown (a full page rerun); cells the page "
                     "does not offer (rejected by the gate) are replaced by the next. Browsers share the machine "
                     "with the server.",
        }
        text = json.dumps(res, indent=2)
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(table(res))
        print(f"\nwrote {out}")
        ok = res["completed_sessions"] == a.sessions and not res["errors"] and not leaked
        if not ok:
            print(f"server log and error screenshots kept in {tmp}", file=sys.stderr)
        return 0 if ok else 1
    except KeyboardInterrupt:
        print(f"interrupted; server stopped. Log in {tmp}", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(f"server log in {tmp}", file=sys.stderr)
        return 1
    finally:
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
