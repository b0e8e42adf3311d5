"""Benchmark the Classify page in a real browser: N real crops from the Classify click to the complete table.

    .venv/bin/python bench/app_flow.py --cells 500 --out bench/results/app_flow.json

Starts ``streamlit run app.py`` (headless, loopback, a throw-away SQLite database) and drives it with Debian's
chromium through Playwright (``bench/appdriver.py``, the same steps as the browser tests):

* cold start: from launching the server until its health check answers, and until the first signed-in page has
  been drawn with the default model loaded (``import`` + bundle + ONNX Runtime session);
* for each of ``--repeat`` cases: the N crops are uploaded, then the time from the Classify click until the page
  says "Classification complete" and has drawn the complete case (the background job, the database, the table);
* the same once more with a competing CPU-bound process pinned to one core.

Writes JSON; nothing here is asserted. The browser runs on the same machine and takes CPU from the server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=500)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "bm-dev"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    from bench import appdriver
    from bmcore.bench import competing_process
    from bmcore.cli import default_bundle
    from bmcore.bench import cpu_model
    from bmcore.predictor import Predictor

    files = sorted(Path(a.data).rglob("*.jpg"))
    files = files[:: max(1, len(files) // a.cells)][: a.cells]
    tmp = Path(tempfile.mkdtemp())
    setting = Predictor(default_bundle()).setting
    res: dict = {"cells": len(files), "data": Path(a.data).name, "default_setting": setting,
                 "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                             "browser": "chromium (Playwright) on the same machine"}}
    t_launch = time.perf_counter()
    with appdriver.app_server(tmp / "bench.db", tmp / "server.log") as srv, sync_playwright() as pw:
        res["server_start_to_health_s"] = time.perf_counter() - t_launch
        browser = appdriver.launch(pw)
        page = appdriver.new_page(browser, 600)
        t = time.perf_counter()
        appdriver.goto(page, srv.url)
        expect(page.get_by_text("Model for new cases")).to_be_visible()
        appdriver.wait_idle(page)
        res["first_page_with_model_loaded_s"] = time.perf_counter() - t
        res["cold_start_s"] = time.perf_counter() - t_launch

        def one(code: str) -> float:
            appdriver.open_classify(page, srv.url, code)
            appdriver.upload(page, files)
            t0 = time.perf_counter()
            m = appdriver.classify(page, code)
            dt = time.perf_counter() - t0
            done = int(m["Cells classified"]) + int(m["Rejected: not a cell crop"]) + int(m["Unreadable files"])
            assert done == len(files), f"{done} of {len(files)} crops in the table: {m}"
            print(f"{code}: {dt:.2f} s {m}", flush=True)
            return dt

        runs = [one(f"FLOW-{i}") for i in range(a.repeat)]
        with competing_process():
            loaded = one("FLOW-LOAD")
        browser.close()
    res.update({"classify_click_to_complete_table_s": runs,
                "classify_click_to_complete_table_s_median": statistics.median(runs),
                "classify_click_to_complete_table_s_with_competing_process": loaded,
                "per_cell_ms": 1000 * statistics.median(runs) / len(files)})
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
