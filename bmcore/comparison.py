"""Result files for the model-comparison page: one JSON per model run, one schema.

A result holds ``key``, ``title``, ``backbone``, ``weights_source``, ``img_size``, ``epochs``,
``train_seconds``, ``hardware``, ``parameters``, ``cpu_ms_per_cell``, ``command``, ``split``
and ``metrics`` (the dict of ``bmcore.metrics.classification_metrics``). The comparison
study writes them under ``assets/comparison/``; a bundle's own ``eval_test.json`` can be
turned into one, so the page has something real to show before any study has run.
"""

from __future__ import annotations

import json
from pathlib import Path

REQUIRED = ("key", "title", "backbone", "weights_source", "img_size", "split", "metrics")
REQUIRED_METRICS = ("accuracy", "macro_f1", "weighted_f1", "balanced_accuracy", "per_class", "confusion_matrix",
                    "roc", "ece")


def validate(result: dict) -> list[str]:
    """Problems with one result dict (empty when it matches the schema the page reads)."""
    errs = [f"missing {k}" for k in REQUIRED if k not in result]
    m = result.get("metrics", {})
    errs += [f"metrics missing {k}" for k in REQUIRED_METRICS if k not in m]
    if "per_class" in m and "confusion_matrix" in m and len(m["confusion_matrix"]) != len(m["per_class"]):
        errs.append("confusion matrix size does not match the class list")
    return errs


def load_results(folder: str | Path) -> list[dict]:
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        if p.name == "summary.json":
            continue
        r = json.loads(p.read_text())
        if not validate(r):
            out.append(r)
    return out


def result_from_bundle(bundle) -> dict | None:
    """The comparison-page view of a bundle's test evaluation, or None if it was never evaluated."""
    ev = bundle.path / "eval_test.json"
    if not ev.is_file():
        return None
    e = json.loads(ev.read_text())
    tr = bundle.meta.get("training", {})
    return {"key": bundle.name, "title": f"{bundle.name} (bundled default)", "backbone": bundle.backbone,
            "weights_source": tr.get("weights_source", ""), "img_size": bundle.data_config.input_size,
            "epochs": tr.get("epochs_run"), "train_seconds": tr.get("train_seconds"), "hardware": tr.get("hardware"),
            "parameters": bundle.meta.get("parameters"), "command": tr.get("command", ""), "tta": e.get("tta"),
            "split": f"test split of {e.get('split_file')} ({e['metrics']['n']} crops, {e.get('data_root')})",
            "ece_before_temperature": e.get("ece_before_temperature"), "metrics": e["metrics"]}
