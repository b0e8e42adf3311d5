"""Review-gallery timings in a real browser: how long a class page takes to draw, and each move / confirm action.

    .venv/bin/python bench/review_flow.py --cells 500 --out bench/results/review_flow.json

A case of N real crops from ../shared/data/bm-dev, classified in-process by the bundled default model, is reviewed
in headless Chromium by a scripted technologist: every class opened (and each of its pages), 5% of the cells moved
to their true class (the file name says it, as a reviewer's eye would), every class page confirmed as drawn. Then
the same on a second copy of the case with a CPU-bound process pinned to one of the cores (a lab server is never
idle). Times are from the click to Streamlit's "script finished" marker with the page redrawn; the browser and the
server share the machine's cores. Writes JSON; no assertion on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import appdriver  # noqa: E402


def _stats(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    return {"n": len(xs), "median_s": round(statistics.median(xs), 3), "p95_s": round(xs[int(0.95 * (len(xs) - 1))], 3),
            "max_s": round(xs[-1], 3)}


def review(url: str, case_code: str, store, cid: int, move_share: float) -> dict:
    from playwright.sync_api import sync_playwright

    from bmcore import caserules

    case = store.get_case(cid)
    groups = caserules.gallery_order(case)
    ok = [c for c in case.cells if caserules.status(c) == caserules.OK]
    wrong = [c for c in ok if c.name[:3] != c.predicted and c.name[:3] in (case.model_classes or [])]
    n_moves = max(1, int(move_share * len(ok)))
    moves = {c.id: c.name[:3] for c in wrong[:n_moves]}
    page_draw, move_times, confirm_times, clicks = [], [], [], 0
    t_all = time.perf_counter()
    with sync_playwright() as pw:
        browser = appdriver.launch(pw)
        page = appdriver.new_page(browser, 300)
        appdriver.open_case(page, url, case_code, user="tech")
        page.get_by_role("link", name="Review").first.click()
        appdriver.wait_idle(page)
        for group, cells in groups:  # every class page drawn
            t = time.perf_counter()
            appdriver.gallery_open(page, group)
            page_draw.append(time.perf_counter() - t)
            clicks += 1
            pages = -(-len(cells) // 40)
            for p in range(2, pages + 1):
                t = time.perf_counter()
                page.get_by_role("radio", name=str(p), exact=True).click()
                appdriver.wait_idle(page)
                page_draw.append(time.perf_counter() - t)
                clicks += 1
            if pages > 1:
                page.get_by_role("radio", name="1", exact=True).click()
                appdriver.wait_idle(page)
            # the misplaced cells of this class's first page, one move per target class
            first = {c.id for c in cells[:40]}
            todo: dict[str, list] = {}
            for c in cells:
                if c.id in moves and c.id in first:
                    todo.setdefault(moves[c.id], []).append(c)
            for target, mv in todo.items():
                for c in mv:
                    appdriver.gallery_tick(page, c.position + 1)
                    clicks += 1
                move_times.append(appdriver.gallery_move(page, target))
                clicks += 1
        confirm_times = appdriver.gallery_confirm_everything(page)
        clicks += 2 * len(confirm_times)
        browser.close()
    left = sum(map(caserules.unresolved, store.get_case(cid).cells))
    return {"classified_cells": len(ok), "classes": len(groups), "moves_planned": len(moves),
            "class_page_draw": _stats(page_draw), "move_action": _stats(move_times),
            "confirm_action": _stats(confirm_times), "clicks": clicks,
            "one_cell_page_min_clicks": len(ok) - len(moves) + 3 * len(moves),
            "review_wall_s": round(time.perf_counter() - t_all, 1), "unresolved_after": left}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=500)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "bm-dev"))
    ap.add_argument("--move-share", type=float, default=0.05)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    why = appdriver.browser_missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    from bmcore.cases import CaseStore

    pool = sorted(Path(a.data).rglob("*.jpg"))
    crops = pool[:: max(1, len(pool) // a.cells)][: a.cells]
    tmp = Path(tempfile.mkdtemp(prefix="bm-review-flow-"))
    db = tmp / "review.db"
    appdriver.add_users(db)
    t = time.perf_counter()
    cids = {code: appdriver.classified_case(db, code, crops) for code in ("REVIEW-IDLE", "REVIEW-BUSY")}
    built = time.perf_counter() - t
    store = CaseStore(f"sqlite:///{db}")
    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
           "cells": len(crops), "data": Path(a.data).name, "case_build_s": round(built, 1),
           "note": "click to page redrawn in headless Chromium; browser and server on the same cores"}
    with appdriver.app_server(db, tmp / "server.log") as srv:
        res["idle"] = review(srv.url, "REVIEW-IDLE", store, cids["REVIEW-IDLE"], a.move_share)
        hog = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
        try:
            res["one_core_busy"] = review(srv.url, "REVIEW-BUSY", store, cids["REVIEW-BUSY"], a.move_share)
        finally:
            hog.kill()
        log = (tmp / "server.log").read_text()
        res["server_log_tracebacks"] = log.count("Traceback")
    text = json.dumps(res, indent=2, default=str)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
