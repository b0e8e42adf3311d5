"""Cells of a class the model lacks: does the app send them to a person? A leave-classes-out simulation.

A base model is trained without two of the 8 classes (``--held-out``, default PMO and MON: their crops are dropped
from the train and val splits of ``train/splits/bm-dev_seed42.csv``), with the project's own pipeline: ``train.train``
(MobileNetV2 from ImageNet weights, ``--img-size`` px, ``--epochs``; the default model is the same network at 224 px), the gate (``train.ood.fit``) and the review rule
(``train.triage``) fitted on its train / val splits. Then the whole test split (the held-out classes included) goes
through the app's predictor (gate on, one view), and for each crop: refused by the gate, sent to review by the rule,
its confidence (max softmax) and its gate score.

Figures: the share of held-out-class cells that reach a person (refused or sent to review) under the rule as fitted,
against the share of known-class cells it sends; then each score tried alone (confidence, the gate's combined
Mahalanobis + energy score) with its threshold set so that known-class cells go to a person at the same share as
under the rule, and the union of the rule with the gate score at a threshold that adds at most ``--extra-review`` of
known-class cells. Goal: >= 90% of held-out-class cells to a person. No timing is asserted.

    .venv/bin/python bench/open_set.py --out bench/results/open_set.json
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmcore.bench import cpu_model, write_result  # noqa: E402


def _capture(scores_known, scores_unknown, share_known: float) -> tuple[float, float]:
    """(threshold, share of unknown at or above it) for the threshold that flags ``share_known`` of known cells."""
    t = float(np.quantile(scores_known, 1 - share_known)) if share_known > 0 else float("inf")
    return t, float(np.mean(scores_unknown >= t))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "bm-dev"), help="the crops")
    ap.add_argument("--splits", default=str(REPO / "train" / "splits" / "bm-dev_seed42.csv"), help="split file")
    ap.add_argument("--held-out", default="PMO,MON", help="the two classes the base model never sees")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the base model")
    ap.add_argument("--img-size", type=int, default=224, help="input side of the base model")
    ap.add_argument("--extra-review", type=float, default=0.10,
                    help="known-class cells the union rule may add to the rule's review share")
    ap.add_argument("--work", default=None, help="folder for the base model (default: a temporary one)")
    ap.add_argument("--out", default=None, help="JSON to write")
    a = ap.parse_args(argv)
    held = a.held_out.split(",")
    work = Path(a.work or tempfile.mkdtemp(prefix="open_set_"))
    work.mkdir(parents=True, exist_ok=True)
    with open(a.splits) as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if r["split"] == "test" or r["label"] not in held]
    csv_path = work / "splits_without.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([r for r in keep if r["split"] != "test" or r["label"] not in held])  # the base never sees them
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "train.train", "--data-root", a.data_root, "--splits", str(csv_path),
                    "--backbone", "mobilenetv2", "--weights", "auto", "--img-size", str(a.img_size), "--epochs",
                    str(a.epochs), "--tta", "off", "--evaluate-test", "false", "--gate", "false", "--resume", "false",
                    "--out", str(work / "run"), "--bundle-name", "without-" + "-".join(held)], cwd=REPO, check=True)
    train_seconds = time.perf_counter() - t0
    from bmcore.bundle import load_bundle
    from bmcore.predictor import Predictor
    from train import ood, triage

    bundle = load_bundle(work / "run" / "bundle")
    from train.evaluate import evaluate

    evaluate(bundle, a.data_root, csv_path, split="val", fit_calibration=True, write=False)
    ood.fit(bundle, a.data_root, csv_path)
    triage.fit_and_measure(bundle, a.data_root, csv_path)
    bundle = load_bundle(bundle.path)
    pred = Predictor(bundle, tta=False)
    test = [r for r in rows if r["split"] == "test"]
    preds = []
    for i in range(0, len(test), 128):
        chunk = test[i:i + 128]
        preds += pred.predict([Path(a.data_root) / r["path"] for r in chunk], [r["path"] for r in chunk],
                              rules=pred.rules)
    unknown = np.array([r["label"] in held for r in test])
    refused = np.array([p.rejected for p in preds])
    review = np.array([p.needs_review for p in preds])
    person = refused | review
    conf = np.array([p.confidence if p.ok else 0.0 for p in preds])
    gate = np.array([p.ood_score for p in preds])
    share_known = float(person[~unknown].mean())
    out = {"what": "cells of two classes the base model never saw, through the app's predictor and review rule",
           "held_out": held, "data": f"test split of {Path(a.splits).name}: {int((~unknown).sum())} crops of known "
                                     f"classes, {int(unknown.sum())} of the held-out ones",
           "base": f"{bundle.name}: mobilenetv2 {a.img_size} px, {a.epochs} epochs from ImageNet weights, "
                   f"gate and rule fitted on its own train / val splits", "rule": pred.rules.describe(),
           "machine": cpu_model(), "train_seconds": round(train_seconds, 1),
           "rule_as_fitted": {"known_to_a_person": share_known,
                              "held_out_to_a_person": float(person[unknown].mean()),
                              "held_out_refused": float(refused[unknown].mean()),
                              "held_out_sent_to_review": float((review & ~refused)[unknown].mean())},
           "scores_at_the_rules_known_share": {}}
    for name, s in (("low confidence (1 - max softmax)", 1 - conf), ("gate score (Mahalanobis + energy)", gate)):
        t, cap = _capture(s[~unknown], s[unknown], share_known)
        out["scores_at_the_rules_known_share"][name] = {"threshold": t, "held_out_to_a_person": cap}
    # the rule, plus the gate score at the threshold that adds at most --extra-review of known cells
    extra_t, _ = _capture(gate[~unknown & ~person], gate[unknown], a.extra_review / max(1e-9, 1 - share_known))
    union = person | (gate >= extra_t)
    out["rule_or_gate_score"] = {"gate_threshold": extra_t, "known_to_a_person": float(union[~unknown].mean()),
                                 "held_out_to_a_person": float(union[unknown].mean())}
    out["goal_90_percent_reached_by"] = [k for k, v in [("rule as fitted", out["rule_as_fitted"]["held_out_to_a_person"]),
                                                        ("rule or gate score", out["rule_or_gate_score"]["held_out_to_a_person"])]
                                         + [(k, v["held_out_to_a_person"]) for k, v in
                                            out["scores_at_the_rules_known_share"].items()] if v >= 0.9]
    return write_result(out, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
