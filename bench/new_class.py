"""How many signed cells does a class the model lacks need before the model learns it?

The base is the leave-classes-out model of ``bench/open_set.py`` (trained without PMO and MON). A lab signs ``N``
cells of each of the two classes (drawn from the train split, which the base never saw them in), in cases of 20
cells, with ``--known`` signed cells of each class it knows; ``python -m train.learn --from-folder`` learns a candidate from them (``--min-class-cells 1``: the classes are
added whatever N, so that the figure for each N can be read), with the reference training split of the known
classes replayed, and measures it on the reference test split (which holds 78 PMO and 113 MON). For N = 30, 100, 300:
each new class's F1 on that test split, and the known classes' macro-F1. No timing is asserted.

    .venv/bin/python bench/open_set.py --work runs/open_set --out bench/results/open_set.json   # the base
    .venv/bin/python bench/new_class.py --base runs/open_set/run/bundle --out bench/results/new_class.json
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmcore.bench import cpu_model, write_result  # noqa: E402
from bmcore.bundle import load_bundle  # noqa: E402
from train.learn import figures, predict_as_run, reference_items  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the bundle trained without the new classes (bench/open_set.py)")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "bm-dev"), help="the crops")
    ap.add_argument("--splits", default=str(REPO / "train" / "splits" / "bm-dev_seed42.csv"), help="split file")
    ap.add_argument("--new", default="PMO,MON", help="the classes the base lacks")
    ap.add_argument("--cells", default="30,100,300", help="signed cells of each new class, one run each")
    ap.add_argument("--known", type=int, default=25, help="signed cells of each class the base knows, in every run")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draw")
    ap.add_argument("--learn-args", default="", help="further flags for python -m train.learn, as one string")
    ap.add_argument("--out", default=None, help="JSON to write")
    a = ap.parse_args(argv)
    new = a.new.split(",")
    with open(a.splits) as f:
        train = [r for r in csv.DictReader(f) if r["split"] == "train"]
    runs = []
    for n in map(int, a.cells.split(",")):
        rng = random.Random(a.seed)
        tmp = Path(tempfile.mkdtemp(prefix=f"new_class_{n}_"))
        picked = []
        for k in sorted({r["label"] for r in train}):  # N of each new class, KNOWN of each class the base knows
            rows = [r for r in train if r["label"] == k]
            picked += rng.sample(rows, min(n if k in new else a.known, len(rows)))
        rng.shuffle(picked)
        for i, r in enumerate(picked):
            p = tmp / "lab" / r["label"] / f"case_{i // 20:03d}" / Path(r["path"]).name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes((Path(a.data_root) / r["path"]).read_bytes())
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "train.learn", "--from-folder", str(tmp / "lab"), "--base", a.base,
                              "--out", str(tmp / "out"), "--name", "cand", "--min-class-cells", "1", "--reference-root",
                              a.data_root, "--reference-splits", a.splits, "--seed", str(a.seed), *shlex.split(a.learn_args)],
                             cwd=REPO, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stdout[-3000:], res.stderr[-3000:], file=sys.stderr)
            return res.returncode
        rep = json.loads((tmp / "out" / "cand" / "report.json").read_text())
        ref = rep["figures"]["candidate"]["reference_test"]
        # the same test split with the gate off: what the classifier alone gets right, and what the gate costs
        cand = load_bundle(tmp / "out" / "cand" / "bundle")
        bare = figures(*predict_as_run(cand, reference_items(Path(a.data_root), Path(a.splits), cand.classes),
                                       gate=False))
        known = [v for k, v in ref["per_class_f1"].items() if k not in new]
        runs.append({"signed_cells_per_new_class": n, "trained_cells": rep["cells_per_side"]["train"],
                     "classes": rep["classes"], "new_class_f1": {k: ref["per_class_f1"].get(k) for k in new},
                     "known_classes_macro_f1": sum(known) / len(known), "refusal": ref["refusal"],
                     "new_class_f1_gate_off": {k: bare["per_class_f1"].get(k) for k in new},
                     "new_class_refused": {k: ref["per_class_refused"].get(k, 0) for k in new},
                     "new_class_test_cells": {k: ref["per_class_cells"].get(k, 0) for k in new},
                     "base_known_classes_macro_f1": (lambda b: sum(v for k, v in b.items() if k not in new) /
                                                     len([k for k in b if k not in new]))(
                         rep["figures"]["current"]["reference_test"]["per_class_f1"]),
                     "train_seconds": rep["train_seconds"], "seconds": round(time.perf_counter() - t0, 1)})
    return write_result({"what": "F1 of two classes the base lacked, learnt from N signed cells of each",
                         "base": Path(a.base).parent.parent.name + "/run/bundle (bench/open_set.py --work)", "new": new, "data": f"signed cells: train split of {Path(a.splits).name}; "
                         "measured on its test split (as the app runs it, refusals as errors)", "machine": cpu_model(),
                         "learn_args": a.learn_args, "runs": runs}, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
