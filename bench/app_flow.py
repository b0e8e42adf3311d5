"""Benchmark the Classify page flow: N real crops from upload to the complete results table.

    .venv/bin/python bench/app_flow.py --cells 200 --out bench/results/app_flow.json

Runs the real page in-process with streamlit.testing.v1.AppTest (no browser: the time is the
server-side work of one rerun: decode, predict, thumbnails, database, table and gallery).
Writes JSON; nothing here is asserted. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "bm-dev"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from streamlit.testing.v1 import AppTest

    files = sorted(Path(a.data).rglob("*.jpg"))
    files = files[:: max(1, len(files) // a.cells)][: a.cells]
    payload = [(f.name, f.read_bytes(), "image/jpeg") for f in files]
    times, first = [], None
    tmp = Path(tempfile.mkdtemp())
    os.environ["BM_DATABASE_URL"] = f"sqlite:///{tmp / 'bench.db'}"
    from bench.appdriver import USERS, add_users
    from bmcore.cases import CaseStore

    add_users(tmp / "bench.db")
    tech = CaseStore(os.environ["BM_DATABASE_URL"]).authenticate("tech", USERS["tech"][1])
    for i in range(a.repeat + 1):  # the first run also loads the model: reported apart
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=600)
        at.session_state["actor"] = tech  # signed in
        at.run()
        at.switch_page("views/classify.py").run()
        at.text_input(key="new_case_code").set_value(f"BENCH-{i}")
        at.file_uploader(key="uploads").set_value(payload)
        at.run()
        t = time.perf_counter()
        at.button[0].click().run()
        dt = time.perf_counter() - t
        assert not at.exception, at.exception
        n = next(m.value for m in at.metric if m.label == "Cells classified")
        assert int(n) == len(files), n
        if i == 0:
            first = dt
        else:
            times.append(dt)
    import torch

    res = {"cells": len(files), "data": Path(a.data).name,
           "upload_to_results_seconds_median": statistics.median(times), "runs": times,
           "first_run_seconds_including_model_load": first, "per_cell_ms": 1000 * statistics.median(times) / len(files),
           "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                       "torch_threads": torch.get_num_threads()}}
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
