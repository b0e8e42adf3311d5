"""Learn a candidate model from a laboratory's own labelled cells, held to acceptance criteria fixed beforehand.

    python -m train.learn --from-store --out runs/learn                   # the signed cases of BM_DATABASE_URL
    python -m train.learn --from-folder DIR --out runs/learn               # DIR/<CLASS>/[<case>/]*.jpg
    python -m bmcore learn ...                                             # the same, from the app's command line

What it does, in order (each step written to ``<out>/<name>/status.json`` as it goes):

1. **The lab's cells.** From the store: the cells of signed-off cases only, never a demo case, deduplicated by
   sha256, each with the label it was signed with; an image the gate refused only where a reviewer gave it a class;
   dismissed images never. The image is the stored one (the upload itself for a JPEG crop of at most 256 px, else a
   256 px copy). From a folder: one sub-folder per class code; a case is the first folder below the class folder
   (TCIA's download nests them); images directly in a class folder are each their own case (image-level, said in
   the report).
2. **A lab test set held out by case** (``--lab-test-share`` of the cases, chosen by a hash of the case id: all cells
   of a case on one side), never used to train, calibrate or select; of the other cases ``--lab-val-share`` make a
   lab validation set (temperature, gate threshold, review rule).
3. **Classes.** The base model's, plus each class of its task with at least ``--min-class-cells`` training cells of
   the lab, in the task's order; a class with fewer is left out of training (its cells stay in the lab test, where
   they count as errors for both models).
4. **Fine-tuning** from the base bundle (``train.train``, ``--init-from``: the classifier rows of a new class start
   fresh) on the lab's training cells plus as many crops of the reference training split (``--reference-root`` /
   ``--reference-splits``; replay keeps what the reference lab taught; ``--replay-ratio``), with light augmentation
   (``--augment``).
5. **Refits on the lab's own data**: the temperature and the gate's threshold on the lab validation set (set to refuse
   under the criterion's limit by the sampling error of so few cells: ``gate_target``), the gate's
   class statistics on the training cells (``train.ood``), the review rule on the lab validation set
   (``train.triage``); the ONNX export (fp32) the app runs.
6. **Measured as the app runs it** (``bmcore.predictor.Predictor``: the bundle's engine, one view, the gate on),
   current model and candidate alike: the lab test set (macro-F1 with refusals counted as errors, per class,
   refusal) and the reference test split.
7. **Criteria** (``--criteria FILE``, JSON, read before anything is learnt; defaults in ``DEFAULT_CRITERIA``): each
   checked, and the candidate marked ``passed`` or kept for inspection with the reasons. The bundle's ``lineage``
   names the base bundle (name, sha256), the data per class and case count, the criteria, the command, the machine
   and the time; ``report.json`` beside it holds every figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bmcore.agreement import REFUSED
from bmcore.bundle import find_bundles, load_bundle, pick_default, update_bundle_meta
from bmcore.governance import DEFAULT_CRITERIA, check
from bmcore.labdata import (LabCell, cells_from_folder, cells_from_store, choose_classes, refusal_to_start,
                            split_by_case)

REPO = Path(__file__).resolve().parents[1]


def write_dataset(work: Path, cells: list[LabCell], sides: dict[str, str], classes: list[str],
                  reference_root: Path | None, reference_splits: Path | None, seed: int,
                  replay_classes: list[str] | None = None, replay_ratio: float = 1.0) -> tuple[Path, Path, dict]:
    """The lab cells as a dataset root + split CSV the training modules read (``lab/<CLASS>/<sha>.jpg``), with the
    replayed reference training crops (``ref/...``, a link to the reference root) added to the train split:
    ``replay_ratio`` times as many as the lab's training cells, alike per class."""
    import pandas as pd

    root = work / "data"
    shutil.rmtree(root, ignore_errors=True)
    rows = []
    for c in cells:
        side = sides[c.case]
        if c.label not in classes:
            continue  # a class too rare to learn yet: measured in the lab test only (an error for both models)
        p = root / "lab" / c.label / f"{c.sha256}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(c.data)
        rows.append({"path": f"lab/{c.label}/{c.sha256}.jpg", "label": c.label, "sha256": c.sha256, "split": side,
                     "case": c.case})
    replay = 0
    if reference_root and reference_splits and Path(reference_root).is_dir():
        ref = pd.read_csv(reference_splits)
        # what the reference taught the base: its own classes only (a class learnt from the lab is learnt from the
        # lab's cells alone, so that its figure says what those cells did)
        ref = ref[(ref.split == "train") & ref.label.isin(replay_classes or classes)]
        n = sum(r["split"] == "train" for r in rows)
        per = max(1, int(replay_ratio * n) // max(1, ref.label.nunique()))  # replay_ratio x the lab's, alike per class
        pick = pd.concat([g.sample(min(len(g), per), random_state=seed) for _, g in ref.groupby("label")])
        (root / "ref").symlink_to(Path(reference_root).resolve(), target_is_directory=True)
        for r in pick.itertuples():
            rows.append({"path": f"ref/{r.path}", "label": r.label, "sha256": r.sha256, "split": "train",
                         "case": "(reference)"})
        replay = len(pick)
    csv = work / "lab_splits.csv"
    df = pd.DataFrame(rows)
    df.to_csv(csv, index=False)
    # the tests' split file for the measuring modules: only the lab test set as "test"
    return root, csv, {"replayed_reference_crops": replay, "train_rows": int((df.split == "train").sum())}


def gate_target(limit: float, n_val: int, *, ceiling: float = 0.04, floor: float = 0.02, z: float = 1.2816) -> float:
    """The share of the lab's validation cells the refitted gate is set to refuse: under the criterion's limit by
    the sampling error of a quantile fitted on ``n_val`` cells, so that the refusal of unseen cases stays under the
    limit with about 90% confidence (one-sided normal bound); never above the shipped gate's 4%, and never under 2%
    (with a few dozen validation cells the bound would leave a gate that refuses almost nothing: at 50 cells it is
    1.0%; such a candidate's refusal is then for the criterion to judge). At 160 validation cells this is 2.8%, at
    1,000 cells 4%. Measured: a 4% target on 160 cells gave 4.9% and 5.8% on two runs."""
    if n_val <= 0:
        return ceiling
    return float(max(floor, min(ceiling, limit - z * math.sqrt(limit * (1 - limit) / n_val))))


def predict_as_run(bundle, items, *, gate: bool = True) -> tuple[list[str], list[str]]:
    """(the model's label or REFUSED, the true label) as the app predicts: its engine, one view, the gate on (off:
    what the classifier alone says, for a benchmark's diagnosis)."""
    from bmcore.inputs import InputItem
    from bmcore.predictor import Predictor

    pred = Predictor(bundle, tta=False, gate=gate)
    out = []
    for i in range(0, len(items), 64):
        chunk = [InputItem(f"{k}.jpg", d) for k, (d, _) in enumerate(items[i:i + 64])]
        out += [REFUSED if p.rejected or not p.ok else p.code for p in pred.predict_items(chunk)]
    return out, [y for _, y in items]


def figures(said: list[str], truth: list[str]) -> dict:
    """Macro-F1 over the true classes with refusals counted as errors, per class F1, accuracy and refusal."""
    from sklearn.metrics import f1_score

    labels = sorted(set(truth))
    f1 = f1_score(truth, said, labels=labels, average=None, zero_division=0)
    return {"cells": len(truth), "macro_f1": float(np.mean(f1)) if labels else None,
            "accuracy": float(np.mean([s == t for s, t in zip(said, truth)])) if truth else None,
            "refused": int(sum(s == REFUSED for s in said)),
            "refusal": float(np.mean([s == REFUSED for s in said])) if said else None,
            "per_class_f1": {c: float(v) for c, v in zip(labels, f1)},
            "per_class_cells": dict(Counter(truth)),
            "per_class_refused": dict(Counter(t for s, t in zip(said, truth) if s == REFUSED))}


def _status(path: Path, step: str, **kw) -> None:
    path.write_text(json.dumps({"step": step, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                **kw}, indent=1))
    print(f"[learn] {step}", flush=True)


def reference_items(root: Path, splits: Path, classes: list[str]) -> list[tuple[bytes, str]]:
    import pandas as pd

    df = pd.read_csv(splits)
    df = df[(df.split == "test")]
    return [((root / r.path).read_bytes(), r.label) for r in df.itertuples()]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m train.learn", description=__doc__.split("\n\n")[0],
                                 epilog="Steps: see the module's docstring (python -c 'import train.learn; "
                                        "help(train.learn)').")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-store", action="store_true", help="the signed cases of the store (--db or BM_DATABASE_URL)")
    src.add_argument("--from-folder", default=None, metavar="DIR", help="labelled crops, DIR/<CLASS>/[<case>/]*.jpg")
    ap.add_argument("--db", default=None, help="SQLAlchemy URL or SQLite file (default: BM_DATABASE_URL)")
    ap.add_argument("--base", default=None, help="bundle to learn from (default: the deployed default model)")
    ap.add_argument("--out", required=True, help="folder under which the candidate is written (<out>/<name>/bundle)")
    ap.add_argument("--name", default=None, help="the candidate's name (default: <base>-lab-<UTC time>)")
    ap.add_argument("--criteria", default=None, help="JSON of acceptance criteria, fixed before learning (default: "
                                                     "DEFAULT_CRITERIA)")
    ap.add_argument("--reference-root", default=str(REPO.parent / "shared" / "data" / "bm-dev"),
                    help="the reference crops, replayed while learning and measured after (absent: no replay)")
    ap.add_argument("--reference-splits", default=str(REPO / "train" / "splits" / "bm-dev_seed42.csv"),
                    help="the reference split file (its train split is replayed, its test split measured)")
    ap.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs")
    ap.add_argument("--lr", type=float, default=1e-4,
                    help="peak learning rate (3e-4 cost the reference test 0.022 macro-F1: docs/learning.md)")
    ap.add_argument("--head-lr-mult", type=float, default=10.0,
                    help="the classifier's learning rate as a multiple of --lr, when a class the base lacks is added (its "
                         "row has the most to learn; 1 otherwise)")
    ap.add_argument("--min-steps", type=int, default=300,
                    help="when a class the base lacks is added, train at least this many steps: with few cells, more "
                         "epochs than --epochs (0: --epochs)")
    ap.add_argument("--batch-size", type=int, default=32, help="crops per step")
    ap.add_argument("--augment", choices=("none", "light", "strong"), default="light",
                    help="train-time augmentation (train.data.BatchAugment): light = flips and turns; strong adds a "
                         "zoom and colour jitter")
    ap.add_argument("--replay-ratio", type=float, default=1.0,
                    help="reference training crops replayed, as a multiple of the lab's training cells")
    ap.add_argument("--ema-decay", type=float, default=0.0,
                    help="keep an exponential moving average of the weights with this decay, validated and shipped in "
                         "their place (0: none)")
    ap.add_argument("--select", choices=("best", "last"), default="best",
                    help="the epoch shipped: best (highest macro-F1 on the lab validation cases) or last (with "
                         "--ema-decay, the average the schedule ends on)")
    ap.add_argument("--mixup", type=float, default=0.0,
                    help="mixup alpha (train.train --mixup: timm's Mixup, soft targets; 0: off)")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (smoke tests; 0: none)")
    ap.add_argument("--min-class-cells", type=int, default=30,
                    help="training cells a class the base model lacks needs before it is learnt")
    ap.add_argument("--lab-test-share", type=float, default=0.2, help="share of the cases held out as the lab test")
    ap.add_argument("--lab-val-share", type=float, default=0.2, help="share of the other cases kept for validation")
    ap.add_argument("--seed", type=int, default=0, help="seed of the case split and the replay draw")
    ap.add_argument("--skip-reference-test", action="store_true",
                    help="do not measure the reference test split (faster; the criterion on it is then not checked)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    criteria = {**DEFAULT_CRITERIA, **(json.loads(Path(a.criteria).read_text()) if a.criteria else {})}
    base = load_bundle(a.base or pick_default(find_bundles(os.environ.get("BM_MODELS_DIR") or REPO / "assets" / "models")))
    name = a.name or f"{base.name}-lab-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
    work = Path(a.out) / name
    work.mkdir(parents=True, exist_ok=True)
    status = work / "status.json"
    (work / "criteria.json").write_text(json.dumps(criteria, indent=1))  # fixed before anything is learnt
    _status(status, "reading the lab's cells")
    task = base.meta["task"]
    cells, source = (cells_from_store(a.db or os.environ.get("BM_DATABASE_URL"), task) if a.from_store
                     else cells_from_folder(a.from_folder, task))
    sides = split_by_case(cells, a.lab_test_share, a.lab_val_share, a.seed)
    why = refusal_to_start(cells, sides) if cells else "no labelled cell at all"
    if why:
        _status(status, "refused", reason=why)
        print(f"error: nothing was learnt: {why}", file=sys.stderr)
        return 2
    train_counts = Counter(c.label for c in cells if sides[c.case] == "train")
    classes = choose_classes(base.classes, task, train_counts, a.min_class_cells)
    ref_root = Path(a.reference_root) if a.reference_root and Path(a.reference_root).is_dir() else None
    root, csv, extra = write_dataset(work, cells, sides, classes, ref_root, Path(a.reference_splits), a.seed,
                                     replay_classes=base.classes, replay_ratio=a.replay_ratio)

    _status(status, "fine-tuning", classes=classes, cells=len(cells))
    from train import train as train_mod

    size = base.data_config.input_size
    # --min-steps and --head-lr-mult are for a class the base lacks (its classifier row has everything to learn); a
    # candidate of the base's own classes trains --epochs at one learning rate: on the simulated shifted lab both
    # together gave 0.010 less macro-F1 and 0.008 less on the reference test in 1.7x the time (docs/learning.md)
    adds = [c for c in classes if c not in base.classes]
    epochs = max(a.epochs, -(-a.min_steps // max(1, extra["train_rows"] // a.batch_size))) if adds else a.epochs
    head_lr_mult = a.head_lr_mult if adds else 1.0
    t0 = time.perf_counter()
    train_mod.main(["--data-root", str(root), "--splits", str(csv), "--task", task, "--backbone", base.backbone,
                    "--img-size", str(size), "--weights", "none", "--init-from", str(base.path),
                    "--epochs", str(epochs), "--lr", str(a.lr), "--head-lr-mult", str(head_lr_mult),
                    "--warmup-epochs", "0.3", "--batch-size", str(a.batch_size), "--augment", a.augment,
                    "--ema-decay", str(a.ema_decay), "--select", a.select, "--mixup", str(a.mixup),
                    "--patience", "1000", "--tta", "off",
                    "--resume", "false",
                    "--evaluate-test", "false", "--gate", "false", "--max-steps", str(a.max_steps), "--seed",
                    str(a.seed), "--out", str(work / "run"), "--bundle-name", name])
    train_seconds = time.perf_counter() - t0
    cand_path = work / "bundle"
    shutil.rmtree(cand_path, ignore_errors=True)
    shutil.move(str(work / "run" / "bundle"), cand_path)
    cand = load_bundle(cand_path)

    _status(status, "calibrating on the lab's validation cases")
    from train.evaluate import evaluate

    evaluate(cand, root, csv, split="val", fit_calibration=True, write=False)
    _status(status, "refitting the gate and the review rule on the lab's data; exporting ONNX")
    from bmcore.engine import export_onnx
    from train import ood, triage
    from train.export import calibration_crops

    n_val = sum(sides[c.case] == "val" for c in cells)
    ood.fit(cand, root, csv, target_rejection=gate_target(criteria.get("max_lab_refusal", 0.05), n_val))
    triage.fit_and_measure(cand, root, csv)
    from bmcore.predictor import Predictor

    calib, note = calibration_crops(Predictor(cand, engine="torch", gate=False), root, csv, 128)
    export_onnx(cand, calib, note)
    update_bundle_meta(cand, inference={"engine": "onnx", "precision": "fp32", "tta": False,
                                        "selected_on": "fixed for a learnt candidate: ONNX fp32, one view"})
    cand = load_bundle(cand_path)

    _status(status, "measuring the current model and the candidate as the app runs them")
    lab_test = [(c.data, c.label) for c in cells if sides[c.case] == "test"]
    figs = {}
    for who, b in (("current", base), ("candidate", cand)):
        said, truth = predict_as_run(b, lab_test)
        figs[who] = {"model": b.name, "weights_sha256": b.sha256, "lab_test": figures(said, truth)}
        if ref_root and not a.skip_reference_test:
            r_said, r_truth = predict_as_run(b, reference_items(ref_root, Path(a.reference_splits), b.classes))
            figs[who]["reference_test"] = figures(r_said, r_truth)
    fails = check(criteria, figs["current"], figs["candidate"])
    m = figs["candidate"]["lab_test"]
    n_test_cases = sum(v == "test" for v in sides.values())
    update_bundle_meta(cand, metrics={
        "split": f"lab test: {m['cells']} cells of {n_test_cases} case(s) held out by case, never used to train, "
                 "calibrate or select (refusals counted as errors)",
        "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "per_class_f1": m["per_class_f1"],
        "refusal": m["refusal"], "setting": "as the app runs it: ONNX fp32, one view, the gate on"})

    per_side = {side: dict(Counter(c.label for c in cells if sides[c.case] == side)) for side in ("train", "val", "test")}
    cases = {side: sorted(k for k, v in sides.items() if v == side) for side in ("train", "val", "test")}
    digest = hashlib.sha256("\n".join(sorted(c.sha256 for c in cells if sides[c.case] != "test")).encode()).hexdigest()
    lineage = {"parent_name": base.name, "parent_sha256": base.sha256,
               "method": f"fine-tuned {epochs} epoch(s) from the base"
                         + (f" with {extra['replayed_reference_crops']} reference training crops replayed"
                            if extra["replayed_reference_crops"] else " without replay (no reference crops found)")
                         + f"; {a.augment} augmentation" + (f", mixup {a.mixup:g}" if a.mixup > 0 else "")
                         + f"; weights: the {a.select} epoch's"
                         + (f" average (EMA decay {a.ema_decay:g})" if a.ema_decay > 0 else "")
                         + f"; classes {', '.join(classes)}",
               "learnt_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "data": [{"kind": "signed-cases" if a.from_store else "folder",
                         "description": f"{source['source']}: {len(cases['train'])} training and {len(cases['val'])} "
                                        f"validation case(s); {len(cases['test'])} lab-test case(s) held out",
                         "cells": sum(per_side["train"].values()) + sum(per_side["val"].values()),
                         "classes": dict(Counter(per_side["train"]) + Counter(per_side["val"])), "sha256": digest}]}
    if extra["replayed_reference_crops"]:
        lineage["data"].append({"kind": "split", "description": f"reference train split of "
                                f"{Path(a.reference_splits).name} (replay)", "cells": extra["replayed_reference_crops"]})
    update_bundle_meta(cand, lineage=lineage)
    report = {"name": name, "command": "python -m train.learn " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s)",
              "criteria": criteria, "passed": not fails, "failures": fails, "classes": classes,
              "source": source, "cells_per_side": per_side, "cases": cases, "figures": figs,
              "train_seconds": round(train_seconds, 1), "seconds": round(time.perf_counter() - t_start, 1),
              "note": "lab test: cases held out by a hash of the case id, never used to train, calibrate or select; "
                      "refusals count as errors; classes the model cannot name count as errors"}
    (work / "report.json").write_text(json.dumps(report, indent=1))
    shutil.rmtree(root, ignore_errors=True)  # the lab's images are in the store; the split file keeps their hashes
    shutil.rmtree(work / "run", ignore_errors=True)
    _status(status, "done", passed=not fails, failures=fails)
    lab_c, lab_n = figs["current"]["lab_test"], figs["candidate"]["lab_test"]
    print(f"candidate {cand_path}: lab test macro-F1 {lab_c['macro_f1']:.3f} -> {lab_n['macro_f1']:.3f}, refused "
          f"{lab_c['refusal']:.1%} -> {lab_n['refusal']:.1%}; " + ("passes every criterion" if not fails else
                                                                  "FAILS: " + "; ".join(fails)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
