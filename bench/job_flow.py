"""Benchmark the Classify flow in a real browser: N real crops from pressing Classify to the complete table.

    .venv/bin/python bench/job_flow.py --cells 500 --out bench/results/job_flow.json

Classification runs in the server's background job (bmcore.jobs); the time is what a user waits: from the
click to the page drawn with every cell classified ("Classification complete"). Each setting runs on a fresh
server (model load included in the first case, reported apart) with the browser on the same machine: once on
an otherwise idle machine and once with a competing CPU-bound process pinned to one core (a lab server is
never idle). Writes JSON; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import appdriver  # noqa: E402

BURN = "import time\nwhile True:\n    sum(i * i for i in range(10000))\n"


def one_setting(files: list[Path], repeat: int, tmp: Path, tag: str) -> dict:
    from playwright.sync_api import sync_playwright

    times = []
    with appdriver.app_server(tmp / f"{tag}.db", tmp / f"{tag}.log") as srv, sync_playwright() as pw:
        browser = appdriver.launch(pw)
        for i in range(repeat + 1):  # the first case also loads the model: reported apart
            page = appdriver.new_page(browser, 900)
            code = f"BENCH-{tag}-{i}"
            appdriver.open_classify(page, srv.url, code)
            t = time.perf_counter()
            appdriver.upload(page, files)
            up = time.perf_counter() - t
            t = time.perf_counter()
            m = appdriver.classify(page, code)
            times.append(time.perf_counter() - t)
            print(f"{tag} case {i}: upload {up:.1f} s, classify to complete table {times[-1]:.1f} s", file=sys.stderr)
            n = int(m["Cells classified"]) + int(m["Rejected: not a cell crop"]) + int(m["Unreadable files"])
            assert n == len(files), m
            page.context.close()
        browser.close()
    steady = times[1:] or times
    return {"first_case_seconds_including_model_load": round(times[0], 2),
            "seconds": [round(t, 2) for t in steady], "median_seconds": round(sorted(steady)[len(steady) // 2], 2),
            "ms_per_cell": round(1000 * sorted(steady)[len(steady) // 2] / len(files), 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=500)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "bm-dev"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-busy", action="store_true", help="skip the run with one core busy")
    a = ap.parse_args()
    why = appdriver.browser_missing()
    if why:
        print(why, file=sys.stderr)
        return 2
    pool = sorted(Path(a.data).rglob("*.jpg"))
    tmp = Path(tempfile.mkdtemp())
    up = tmp / "up"
    up.mkdir()
    for f in pool[:: max(1, len(pool) // a.cells)][: a.cells]:
        shutil.copy(f, up / f.name)
    files = sorted(up.iterdir())
    res = {"cells": len(files), "data": f"{Path(a.data).name} (every {max(1, len(pool) // a.cells)}th crop)",
           "what": "click on Classify to the page drawn with every cell classified, background job, real browser",
           "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
           "settings": {}}
    res["settings"]["idle"] = one_setting(files, a.repeat, tmp, "idle")
    if not a.no_busy:
        burn = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", BURN])
        try:
            res["settings"]["one_core_busy"] = one_setting(files, a.repeat, tmp, "busy")
        finally:
            burn.kill()
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
