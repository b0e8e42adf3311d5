"""Evaluate a bundle on the test split, through the same ``Predictor`` the app uses.

    python -m train.evaluate --bundle assets/models/bm8_mobilenetv2 \
        --splits train/splits/bm-dev_seed42.csv --data-root ../shared/data/bm-dev

Only this path reads the test split. Writes ``eval_<split>.json`` beside the bundle.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bmcore.bundle import Bundle, load_bundle, update_bundle_meta
from bmcore.metrics import classification_metrics, fit_temperature, softmax
from bmcore.predictor import Predictor
from bmcore.preprocess import normalize, stack_crops

from .data import CropDataset, load_splits


def split_batches(predictor: Predictor, root: str | Path, splits_csv: str | Path, split: str, batch: int = 128):
    """(targets, iterator of uint8 NCHW batches) of one split, read through the app's decode + resize."""
    df = load_splits(splits_csv)
    df = df[(df.split == split) & df.label.isin(predictor.classes)]
    ds = CropDataset(root, df, predictor.classes, predictor.cfg, cache=False)
    batches = (stack_crops([ds.uint8(j) for j in range(i, min(i + batch, len(ds)))]) for i in range(0, len(ds), batch))
    return np.asarray(ds.targets), batches


def split_logits(predictor: Predictor, root: str | Path, splits_csv: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    y, batches = split_batches(predictor, root, splits_csv, split)
    return np.concatenate([predictor.logits(normalize(xb, predictor.cfg)) for xb in batches]), y


def calibrate(predictor: Predictor, root, splits_csv) -> float:
    """Fit the temperature on the validation split and return it."""
    lg, y = split_logits(predictor, root, splits_csv, "val")
    return fit_temperature(lg, y)


def evaluate(bundle: Bundle | str | Path, root, splits_csv, *, split: str = "test", tta: bool | None = None,
             fit_calibration: bool = False, write: bool = True, device: str | None = None) -> dict:
    """Metrics on ``split`` before and after temperature scaling; optionally fit T on val and store it."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    pred = Predictor(bundle, tta=tta, device=device)
    if fit_calibration:
        t = calibrate(pred, root, splits_csv)
        update_bundle_meta(bundle, calibration={"temperature": t, "fitted_on": "val split of " + Path(splits_csv).name})
        pred.temperature = t
    t0 = time.perf_counter()
    lg, y = split_logits(pred, root, splits_csv, split)
    secs = time.perf_counter() - t0
    classes = pred.classes
    uncal = classification_metrics(y, softmax(lg, 1.0), classes)
    cal = classification_metrics(y, softmax(lg, pred.temperature), classes)
    report = {
        "bundle": bundle.name,
        "weights_sha256": bundle.sha256,
        "split": split,
        "split_file": Path(splits_csv).name,
        "data_root": Path(root).name,
        "split_note": "image-level split (file names carry no patient id); crops never seen in training or model selection",
        "classes": classes,
        "tta": pred.tta,
        "engine": pred.engine,
        "precision": pred.precision,
        "setting": pred.setting,
        "device": str(pred.device),
        "temperature": pred.temperature,
        "ece_before_temperature": uncal["ece"],
        "nll_before_temperature": uncal["nll"],
        "metrics": cal,
        "seconds": round(secs, 2),
    }
    if write:
        (bundle.path / f"eval_{split}.json").write_text(json.dumps(report, indent=1))
        if split == "test":
            m = cal
            update_bundle_meta(bundle, metrics={
                "split": f"test split of {Path(splits_csv).name} ({m['n']} crops, {Path(root).name})",
                "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "weighted_f1": m["weighted_f1"],
                "balanced_accuracy": m["balanced_accuracy"], "macro_auc_ovr": m["macro_auc_ovr"],
                "ece": m["ece"], "ece_before_temperature": uncal["ece"],
                "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items()},
                "tta": pred.tta, "engine": pred.engine, "precision": pred.precision, "setting": pred.setting})
    return report


def bundle_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The command line shared by the bundle + split commands (evaluate, ood): --bundle, --splits, --data-root."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--splits", required=True)
    ap.add_argument("--data-root", required=True)
    return ap


def main(argv=None) -> int:
    ap = bundle_parser("python -m train.evaluate", __doc__)
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--tta", choices=["bundle", "on", "off"], default="bundle")
    ap.add_argument("--fit-calibration", action="store_true", help="refit the temperature on the val split first")
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    tta = None if a.tta == "bundle" else a.tta == "on"
    r = evaluate(a.bundle, a.data_root, a.splits, split=a.split, tta=tta, fit_calibration=a.fit_calibration,
                 device=a.device)
    m = r["metrics"]
    print(f"{r['split']} n={m['n']} acc={m['accuracy']:.4f} macroF1={m['macro_f1']:.4f} "
          f"ECE {r['ece_before_temperature']:.4f} -> {m['ece']:.4f} (T={r['temperature']:.3f}, tta={r['tta']})")
    for c, v in m["per_class"].items():
        print(f"  {c} P={v['precision']:.3f} R={v['recall']:.3f} F1={v['f1']:.3f} n={v['support']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
