"""How much of 4-view TTA's accuracy a selective TTA keeps: extra views only for the cells the single view is unsure
of. Measured on the default bundle's val and test splits with ONNX Runtime fp32; writes JSON.

    .venv/bin/python bench/selective_tta.py --out bench/results/selective_tta.json

For each threshold tau, a cell whose calibrated single-view confidence is under tau gets the mean of the 4 dihedral
views (``bmcore.engine.tta_views``, the app's TTA); the others keep the single view. The threshold is chosen on
**val** as the one with the fewest views per cell whose macro-F1 is within ``--tolerance`` of full TTA's (the rule
``train.export`` uses for settings); the test split's figure of that threshold is recorded beside it, never used to
choose. Views per cell counts 1 + 3 x (share of unsure cells): the cost if only the three missing views ran
(``Predictor(tta_below=...)`` runs all four again for an unsure cell: 1 + 4 x share).

Then, in the same run, a 500-crop differential end to end from JPEG bytes (``Predictor.predict``: decode, model,
gate, verdicts; model load excluded; best of 2) with ONNX fp32 at no TTA, full TTA and the chosen selective TTA,
idle and with a competing CPU-bound process on one core (``bmcore.bench.competing_process``). This measures a
candidate setting; the app does not run it (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("BM_SHARED", REPO.parent / "shared")) / "data"
TAUS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(REPO / "assets" / "models" / "bm14-mobilenetv2-224px"))
    ap.add_argument("--splits", default=str(REPO / "train" / "splits" / "bm-dev_seed42.csv"))
    ap.add_argument("--data-root", default=str(SHARED / "bm-dev"))
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--cells", type=int, default=500, help="crops for the end-to-end timing (0: none)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    from bmcore.engine import tta_views
    from bmcore.metrics import classification_metrics, softmax
    from bmcore.predictor import Predictor
    from bmcore.preprocess import normalize
    from train.evaluate import split_batches

    pred = Predictor(a.bundle, engine="onnx", precision="fp32", tta=False, gate=False)
    T = pred.temperature
    result = {"bundle": pred.bundle.name, "setting": "ONNX fp32", "temperature": T, "tolerance": a.tolerance,
              "splits": Path(a.splits).name, "splits_measured": {}}
    curves = {}
    for split in ("val", "test"):
        y, batches = split_batches(pred, a.data_root, a.splits, split)
        xs = np.concatenate([normalize(b, pred.cfg).numpy() for b in batches])
        views = np.stack([np.concatenate([pred.onnx.session.run(None, {"input": tta_views(xs[i:i + 16])[v]})[0]
                                          for i in range(0, len(xs), 16)]) for v in range(4)])

        def f1(lg):
            return classification_metrics(y, softmax(lg, T), pred.classes)["macro_f1"]

        one, full = views[0], views.mean(0)
        conf = softmax(one, T).max(1)
        rows = []
        for tau in TAUS:
            unsure = conf < tau
            rows.append({"tau": tau, "unsure_share": float(unsure.mean()), "views_per_cell": 1 + 3 * float(unsure.mean()),
                         "macro_f1": f1(np.where(unsure[:, None], full, one))})
        curves[split] = rows
        result["splits_measured"][split] = {"n": int(len(y)), "single_view_macro_f1": f1(one),
                                            "full_tta_macro_f1": f1(full), "by_tau": rows}
    val = result["splits_measured"]["val"]
    ok = [r for r in curves["val"] if r["macro_f1"] >= val["full_tta_macro_f1"] - a.tolerance]
    pick = min(ok, key=lambda r: r["views_per_cell"])
    test_row = next(r for r in curves["test"] if r["tau"] == pick["tau"])
    result["chosen_on_val"] = {"tau": pick["tau"], "val": pick, "test": test_row,
                               "test_full_tta_macro_f1": result["splits_measured"]["test"]["full_tta_macro_f1"]}
    print(json.dumps(result["chosen_on_val"], indent=1))
    if a.cells:
        import pandas as pd

        from bmcore.bench import _timeit, competing_process

        # test-split crops (seeded sample): cells the model never trained on are as unsure as they come in use
        test = pd.read_csv(a.splits).query("split == 'test'").sample(a.cells, random_state=0, replace=a.cells > 810)
        blobs = [(Path(a.data_root) / p).read_bytes() for p in test.path]
        timing = []
        for kw in ({"tta": False}, {"tta": True}, {"tta": False, "tta_below": pick["tau"]}):
            p = Predictor(a.bundle, engine="onnx", precision="fp32", **kw)
            p.predict(blobs[:64])  # warm-up
            idle = _timeit(lambda: p.predict(blobs), 2)
            with competing_process():
                loaded = _timeit(lambda: p.predict(blobs), 1)
            row = {"setting": p.setting, f"differential_{a.cells}_cells_s": idle,
                   f"differential_{a.cells}_cells_s_with_competing_process": loaded}
            if not p.tta and not p.tta_below:  # single-view confidences: how many cells selective TTA re-views
                conf = [r.confidence for r in p.predict(blobs) if r.ok and r.confidence is not None]
            if p.tta_below:
                row["cells_given_all_views"] = int(sum(c < p.tta_below for c in conf))
                row["cells_with_a_confidence"] = len(conf)
            timing.append(row)
            print(json.dumps(timing[-1]), flush=True)
        result["end_to_end"] = {"cells": a.cells, "data": Path(a.data_root).name, "cpu_count": os.cpu_count(),
                                "rows": timing}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
