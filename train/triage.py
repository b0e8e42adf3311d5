"""Choose a bundle's review ("triage") rule on the validation split and measure it on the test split.

    python -m train.triage --bundle assets/models/bm14-mobilenetv2-224px \
        --splits train/splits/bm-dev_seed42.csv --data-root ../shared/data/bm-dev

A cell goes to review when its calibrated top-class confidence is under ``uncertain_below`` or
when its calibrated probability of a critical class (blast; hairy cell with a model that knows
them) reaches that class's threshold (``bmcore.triage``). Cells the bundle's gate refuses are a
bin of their own (no class, no review needed): they are counted and left out of every figure.

* **val** split (chosen there): each critical class's threshold is the largest (on a 0.001 grid)
  that still sends >= 95% of the true cells of that class to review; then ``uncertain_below`` is
  the smallest threshold (0.01 grid: the most cells left to bulk confirmation) for which the
  auto-accepted cells (gate-accepted, confident enough, no critical flag) are >= 97% correct;
* **test** split (never used to choose): the rule's figures, the old built-in default's
  (review under 0.5 confidence, no critical rule) for comparison, and risk-coverage curves.

Probabilities come from the app's ``Predictor`` (the bundle's TTA, temperature and gate).
Writes ``eval_triage.json`` beside the bundle and ``bundle.json["triage"]`` (the rule the app
uses for new cases, with the goal and the headline figures).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from bmcore.bundle import Bundle, load_bundle, update_bundle_meta
from bmcore.predictor import Predictor
from bmcore.tasks import BLAST_CODES, HAIRY_CELL_CODE
from bmcore.triage import DEFAULT_UNCERTAIN_BELOW, ReviewRules

from .evaluate import bundle_parser, split_batches
from .train import hardware

GOAL_ACCURACY = 0.97      # auto-accepted cells at least this often correct
GOAL_SENSITIVITY = 0.95   # at least this share of the true cells of a critical class sent to review
CRITICAL_STEP = 0.001     # grid of the critical thresholds (robust to float noise across machines)
UNCERTAIN_GRID = np.round(np.arange(101) / 100, 2)  # 0.00 .. 1.00
OLD_RULES = ReviewRules(uncertain_below=DEFAULT_UNCERTAIN_BELOW, critical={}, hairy_flag_at=None,
                        source="old built-in default: review under 0.5 confidence, no critical-class rule")


def goal_text(goal_accuracy: float = GOAL_ACCURACY, sensitivity: float = GOAL_SENSITIVITY) -> str:
    return f"auto-accepted >= {goal_accuracy:.0%} correct, blast sensitivity >= {sensitivity:.0%}"


def critical_codes(classes: list[str]) -> list[str]:
    """Classes whose cells go to review whatever the top class: blasts, and hairy cells where the model knows them."""
    return [c for c in classes if c in BLAST_CODES or c == HAIRY_CELL_CODE]


# --- the pure part: numpy in, rule and figures out ---------------------------------------------------


def critical_threshold(p: np.ndarray, positive: np.ndarray, sensitivity: float = GOAL_SENSITIVITY,
                       step: float = CRITICAL_STEP) -> float | None:
    """The largest threshold on a ``step`` grid with ``mean(p[positive] >= t) >= sensitivity``; None without positives."""
    pos = np.sort(np.asarray(p, np.float64)[np.asarray(positive, bool)])[::-1]
    if len(pos) == 0:
        return None
    k = max(1, math.ceil(sensitivity * len(pos) - 1e-9))  # at least k of them must reach the threshold
    v = float(pos[k - 1])
    digits = max(0, -int(math.floor(math.log10(step))))
    t = round(math.floor(v / step) * step, digits)
    while t > v:  # floating point: the grid value must not pass the k-th probability
        t = round(t - step, digits)
    return max(0.0, t)


def review_mask(probs: np.ndarray, classes: list[str], rules: ReviewRules) -> tuple[np.ndarray, np.ndarray]:
    """(uncertain, critical) boolean arrays: ``bmcore.triage.judge`` for many cells at once."""
    p = np.asarray(probs, np.float64)  # compare in float64 like judge() does on Python floats
    uncertain = p.max(1) < rules.uncertain_below
    critical = np.zeros(len(p), bool)
    for c, t in rules.critical.items():
        if c in classes:
            critical |= p[:, classes.index(c)] >= t
    return uncertain, critical


def summarize(probs: np.ndarray, y: np.ndarray, classes: list[str], rules: ReviewRules,
              accepted: np.ndarray | None = None) -> dict:
    """What ``rules`` does to the gate-accepted cells of one split (rejected ones are only counted)."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    accepted = np.ones(len(y), bool) if accepted is None else np.asarray(accepted, bool)
    p, yy = probs[accepted], y[accepted]
    uncertain, critical = review_mask(p, classes, rules)
    review = uncertain | critical
    pred = p.argmax(1)
    wrong = pred != yy
    auto = ~review
    blast_idx = [i for i, c in enumerate(classes) if c in BLAST_CODES]
    is_blast = np.isin(yy, blast_idx)
    pred_blast = np.isin(pred, blast_idx)
    blast_rule = [c for c in rules.critical if c in BLAST_CODES and c in classes]
    flagged = np.zeros(len(p), bool)
    for c in blast_rule:
        flagged |= p[:, classes.index(c)] >= rules.critical[c]
    n, n_auto, n_err, n_bla = int(accepted.sum()), int(auto.sum()), int(wrong.sum()), int(is_blast.sum())
    return {
        "n": int(len(y)), "gate_rejected": int((~accepted).sum()), "n_accepted": n,
        "review": int(review.sum()), "review_fraction": float(review.mean()) if n else None,
        "review_uncertain": int(uncertain.sum()), "review_critical": int(critical.sum()),
        "review_critical_only": int((critical & ~uncertain).sum()),
        "auto_accepted": n_auto, "auto_correct": int((auto & ~wrong).sum()),
        "auto_accuracy": float((~wrong[auto]).mean()) if n_auto else None,
        "errors": n_err, "errors_caught": int((wrong & review).sum()),
        "errors_caught_fraction": float((wrong & review).sum() / n_err) if n_err else None,
        "blasts": n_bla,
        "blasts_flagged": int((flagged & is_blast).sum()) if blast_rule else None,
        "blast_sensitivity": float((flagged & is_blast).sum() / n_bla) if blast_rule and n_bla else None,
        "blasts_reviewed": int((review & is_blast).sum()),
        "blasts_auto_accepted": int((auto & is_blast).sum()),
        "blasts_auto_as_nonblast": int((auto & is_blast & ~pred_blast).sum()),
        "accuracy_all_accepted": float((~wrong).mean()) if n else None,
    }


def risk_coverage(probs: np.ndarray, y: np.ndarray, classes: list[str], rules: ReviewRules,
                  accepted: np.ndarray | None = None, grid: np.ndarray = UNCERTAIN_GRID) -> dict:
    """Coverage (auto-accepted share of gate-accepted cells), error among them and errors caught, per threshold."""
    out = {"uncertain_below": [float(u) for u in grid], "coverage": [], "error_auto": [], "errors_caught": []}
    for u in grid:
        s = summarize(probs, y, classes, ReviewRules(float(u), dict(rules.critical), rules.hairy_flag_at), accepted)
        out["coverage"].append(s["auto_accepted"] / s["n_accepted"] if s["n_accepted"] else None)
        out["error_auto"].append(None if s["auto_accuracy"] is None else 1 - s["auto_accuracy"])
        out["errors_caught"].append(s["errors_caught_fraction"])
    return out


def fit_rules(probs: np.ndarray, y: np.ndarray, classes: list[str], accepted: np.ndarray | None = None, *,
              goal_accuracy: float = GOAL_ACCURACY, sensitivity: float = GOAL_SENSITIVITY,
              grid: np.ndarray = UNCERTAIN_GRID, source: str = "") -> ReviewRules:
    """The review rule fitted on one split's calibrated probabilities (rows: cells; ``y``: true class indices).

    Critical thresholds first (each the largest giving ``sensitivity`` on the true cells of its class), then the
    smallest ``uncertain_below`` on ``grid`` whose auto-accepted cells are ``goal_accuracy`` correct (the most
    cells left to bulk confirmation). Where no grid value reaches the goal, the last (1.00: review everything).
    Only gate-accepted cells (``accepted``) count.
    """
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    acc = np.ones(len(y), bool) if accepted is None else np.asarray(accepted, bool)
    critical = {}
    for c in critical_codes(classes):
        t = critical_threshold(probs[acc, classes.index(c)], y[acc] == classes.index(c), sensitivity)
        if t is not None:
            critical[c] = t
    hairy = critical.get(HAIRY_CELL_CODE)
    chosen = float(grid[-1])
    for u in grid:
        s = summarize(probs, y, classes, ReviewRules(float(u), critical, hairy), acc)
        if s["auto_accepted"] and s["auto_accuracy"] >= goal_accuracy - 1e-12:
            chosen = float(u)
            break
    return ReviewRules(uncertain_below=chosen, critical=critical, hairy_flag_at=hairy, source=source)


# --- the model's probabilities, as the app computes them -----------------------------------------------


def split_probabilities(predictor: Predictor, root, splits_csv, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibrated probabilities, true class indices, gate-accepted mask) of one split.

    Through ``Predictor._judge``, the step ``Predictor.predict`` runs for the app, on the app's decode + resize and
    in its chunks of 64 crops.
    """
    y, batches = split_batches(predictor, root, splits_csv, split, batch=64)
    probs, reasons = [], []
    for xb in batches:
        p, r, _ = predictor._judge(list(xb))
        probs.append(p)
        reasons.extend(r)
    return np.concatenate(probs), y, np.array([not r for r in reasons], bool)


def _headline(s: dict, split: str) -> dict:
    keys = ("n", "gate_rejected", "n_accepted", "review", "review_fraction", "auto_accepted", "auto_accuracy",
            "errors", "errors_caught", "errors_caught_fraction", "blasts", "blasts_flagged", "blast_sensitivity",
            "blasts_auto_as_nonblast")
    return {"split": split, **{k: s[k] for k in keys}}


def fit_and_measure(bundle: Bundle | str | Path, data_root, splits_csv, *, goal_accuracy: float = GOAL_ACCURACY,
                    sensitivity: float = GOAL_SENSITIVITY, write: bool = True) -> dict:
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    pred = Predictor(bundle)  # as the app builds it: the bundle's TTA, temperature and gate
    classes = pred.classes
    t0 = time.perf_counter()
    data = {s: split_probabilities(pred, data_root, splits_csv, s) for s in ("val", "test")}
    secs = time.perf_counter() - t0
    name = Path(splits_csv).name
    goal = goal_text(goal_accuracy, sensitivity)
    p_val, y_val, acc_val = data["val"]
    rules = fit_rules(p_val, y_val, classes, acc_val, goal_accuracy=goal_accuracy,
                      sensitivity=sensitivity, source=f"fitted on the val split of {name} (goal: {goal})")
    report = {
        "bundle": bundle.name, "weights_sha256": bundle.sha256, "split_file": name, "data_root": Path(data_root).name,
        "classes": classes, "goal": goal, "goal_accuracy": goal_accuracy, "goal_blast_sensitivity": sensitivity,
        "rules": rules.to_dict(), "old_rules": OLD_RULES.to_dict(),
        "method": "critical thresholds: largest on a 0.001 grid sending >= the sensitivity goal of the class's true "
                  "(gate-accepted) val cells to review; uncertain_below: smallest on a 0.01 grid whose auto-accepted "
                  "val cells reach the accuracy goal. Gate-rejected cells are counted, not judged.",
        "fitted_on": f"val split of {name}", "measured_on": f"test split of {name}: never used to choose the rule",
    }
    for split, (p, y, acc) in data.items():
        label = f"{split} split of {name} ({len(y)} crops, {Path(data_root).name})"
        report[split] = {"split": label, "rule": summarize(p, y, classes, rules, acc),
                         "old_rule": summarize(p, y, classes, OLD_RULES, acc),
                         "risk_coverage": risk_coverage(p, y, classes, rules, acc)}
    t = report["test"]["rule"]
    report["goal_reached_on_test"] = bool(
        t["auto_accuracy"] is not None and t["auto_accuracy"] >= goal_accuracy
        and (t["blast_sensitivity"] is None or t["blast_sensitivity"] >= sensitivity))
    report.update({"tta": pred.tta, "temperature": pred.temperature, "gate": pred.gate is not None,
                   "device": str(pred.device), "precision": pred.precision, "hardware": hardware(pred.device),
                   "seconds": round(secs, 1),
                   "command": f"python -m train.triage --bundle {bundle.path} --splits {splits_csv} "
                              f"--data-root {data_root}"})
    if write:
        (bundle.path / "eval_triage.json").write_text(json.dumps(report, indent=1))
        update_bundle_meta(bundle, triage={
            "rules": rules.to_dict(), "goal": goal, "goal_accuracy": goal_accuracy,
            "goal_blast_sensitivity": sensitivity,
            "val": _headline(report["val"]["rule"], report["val"]["split"]),
            "test": _headline(report["test"]["rule"], report["test"]["split"]),
            "goal_reached_on_test": report["goal_reached_on_test"]})
    return report


def _line(s: dict) -> str:
    f = lambda v, fmt: "n/a" if v is None else format(v, fmt)  # noqa: E731
    bla = (f"blast sensitivity {f(s['blast_sensitivity'], '.3f')} ({s['blasts_flagged']}/{s['blasts']})"
           if s["blast_sensitivity"] is not None else f"blasts reviewed {s['blasts_reviewed']}/{s['blasts']}")
    return (f"review {f(s['review_fraction'], '.3f')} ({s['review']}/{s['n_accepted']}), auto-accepted accuracy "
            f"{f(s['auto_accuracy'], '.4f')} ({s['auto_correct']}/{s['auto_accepted']}), errors caught "
            f"{s['errors_caught']}/{s['errors']}, {bla}, blasts auto-accepted as non-blast {s['blasts_auto_as_nonblast']}")


def main(argv=None) -> int:
    ap = bundle_parser("python -m train.triage", __doc__)
    ap.add_argument("--goal-accuracy", type=float, default=GOAL_ACCURACY)
    ap.add_argument("--blast-sensitivity", type=float, default=GOAL_SENSITIVITY)
    a = ap.parse_args(argv)
    r = fit_and_measure(a.bundle, a.data_root, a.splits, goal_accuracy=a.goal_accuracy,
                        sensitivity=a.blast_sensitivity)
    print("rule:", ReviewRules.from_dict(r["rules"]).describe())
    for split in ("val", "test"):
        print(f"{split} ({r[split]['rule']['n']} crops, gate refused {r[split]['rule']['gate_rejected']}):")
        print("  rule:     " + _line(r[split]["rule"]))
        print("  old rule: " + _line(r[split]["old_rule"]))
    print(f"goal ({r['goal']}) reached on test: {r['goal_reached_on_test']}; {r['seconds']} s on {r['hardware']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
