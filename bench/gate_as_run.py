"""The gate's refusal of genuine held-out crops as the app runs it, not as a script calls the predictor.

Every crop of the test split (never used to train, calibrate or fit the gate) goes the way an upload goes: read into
the same input items as the Classify page's upload (``bmcore.inputs``), a case created with one pending cell each,
the server's job runner (``bmcore.jobs.JobRunner.start_case``) classifying it with the predictor the app builds for the
bundle (its own inference setting), the cells stored in a case store. The figure is read back from the stored cells:
how many the gate refused, overall, per class and by reason, with a 95% Wilson interval. No timing is asserted
anywhere; the seconds are recorded for context only.

    .venv/bin/python bench/gate_as_run.py --out bench/results/gate_as_run.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmcore.bench import cpu_model  # noqa: E402
from bmcore.bundle import find_bundles, pick_default  # noqa: E402
from bmcore.cases import CaseStore  # noqa: E402
from bmcore.inputs import from_paths  # noqa: E402
from bmcore.jobs import JobRunner  # noqa: E402
from bmcore.metrics import wilson_interval  # noqa: E402
from bmcore.predictor import Predictor  # noqa: E402
from bmcore.tasks import NON_CELL_CODES  # noqa: E402

NOT_A_CELL_CLASS = NON_CELL_CODES & {"ART"}  # artefact crops: genuine crops, but not cells


def test_split(splits: Path, data_root: Path, split: str = "test") -> list[tuple[Path, str]]:
    with open(splits) as f:
        return [(data_root / r["path"], r["label"]) for r in csv.DictReader(f) if r["split"] == split]


def rate(k: int, n: int) -> dict:
    return {"refused": k, "crops": n, "rate": k / n if n else None, "ci95": wilson_interval(k, n) if n else None}


def measure(bundle_dir: Path, splits: Path, data_root: Path, timeout_s: float = 1800) -> dict:
    rows = test_split(splits, data_root)
    pred = Predictor(bundle_dir)  # what appkit.get_predictor builds: the bundle's own inference setting
    with tempfile.TemporaryDirectory() as tmp:
        store = CaseStore(f"sqlite:///{tmp}/gate.db")
        store.add_user("bench", "technologist", "bench-password-1")
        who = store.authenticate("bench", "bench-password-1")
        runner = JobRunner(store)
        items = from_paths([p for p, _ in rows])
        t0 = time.perf_counter()
        cid = runner.start_case("GATE-AS-RUN", items, pred, pred.rules, who)
        while store.latest_job(cid)["status"] in ("queued", "running"):
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError("the job did not finish")
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        job = store.latest_job(cid)
        cells = store.get_case(cid).cells
    label = {p.name: c for p, c in rows}
    assert job["status"] == "done" and len(cells) == len(rows), job
    per_class = {}
    for c in sorted(set(label.values())):
        mine = [x for x in cells if label[x.name] == c]
        per_class[c] = rate(sum(x.rejected for x in mine), len(mine))
    cells_only = [x for x in cells if label[x.name] not in NOT_A_CELL_CLASS]
    return {
        "what": "gate refusals of genuine held-out crops, classified as the app runs it (upload items, a case, the "
                "server's job runner, the stored cells)",
        "bundle": pred.bundle.name, "weights_sha256": pred.bundle.sha256, "setting": pred.setting,
        "split": f"test split of {splits.name} ({len(rows)} crops, {data_root.name}): never used for training, "
                 "calibration or fitting the gate",
        "all_crops": rate(sum(x.rejected for x in cells), len(cells)),
        "cells_only": dict(rate(sum(x.rejected for x in cells_only), len(cells_only)),
                           excluded=sorted(NOT_A_CELL_CLASS)),
        "per_class": per_class,
        "by_reason": dict(Counter(x.reject_reason for x in cells if x.rejected)),
        "unreadable": sum(not x.ok for x in cells),
        "ceiling": 0.05,
        "seconds": round(seconds, 1), "cpu": cpu_model(),
        "measured": time.strftime("%Y-%m-%d"),
        "command": "python bench/gate_as_run.py --out bench/results/gate_as_run.json",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the bundled default model)")
    ap.add_argument("--splits", type=Path, default=REPO / "train" / "splits" / "bm-dev_seed42.csv",
                    help="the splits CSV whose test split is measured")
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "bm-dev",
                    help="folder the CSV's paths are relative to")
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    a = ap.parse_args(argv)
    bundle = a.bundle or pick_default(find_bundles(REPO / "assets" / "models"))
    r = measure(bundle, a.splits, a.data_root)
    t = r["all_crops"]
    print(f"{r['bundle']} ({r['setting']}), as the app runs it: refused {t['refused']} of {t['crops']} test crops "
          f"({t['rate']:.1%}, 95% CI {t['ci95'][0]:.1%}-{t['ci95'][1]:.1%}); cells only (no artefacts) "
          f"{r['cells_only']['refused']} of {r['cells_only']['crops']} ({r['cells_only']['rate']:.1%})")
    for c, v in r["per_class"].items():
        print(f"  {c}: {v['refused']}/{v['crops']} ({v['rate']:.1%})")
    if a.out:
        a.out.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
