"""Result files for the model-comparison page: one JSON per model run, one schema.

A result holds ``key``, ``title``, ``backbone``, ``weights_source``, ``img_size``, ``epochs``,
``train_seconds``, ``hardware``, ``parameters``, ``cpu_ms_per_cell``, ``command``, ``split``
and ``metrics`` (the dict of ``bmcore.metrics.classification_metrics``). The comparison
study writes them under ``assets/comparison/``; a bundle's own ``eval_test.json`` can be
turned into one, so the page has something real to show before any study has run.

A study is a folder ``assets/comparison*/`` of result files plus a ``summary.json`` (``budget``,
``split``, ``data``, ``config``, ``runs``; optionally ``title``, ``hardware``, ``note``).
"""

from __future__ import annotations

import json
import re
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


# where a run on a lent GPU machine read the data from, and what a newcomer's clone has in its place
_STAGED = ((re.compile(r"--splits (?:\.gpu/stage/)?splits_q93\.csv(?: \(bm-dev_seed42\.csv on JPEG q93 copies\))?"),
            "--splits train/splits/bm-dev_seed42.csv"),
           (re.compile(r"--data-root \.gpu/stage/q93"), "--data-root ../shared/data/bm-dev"),
           (re.compile(r"\.gpu/stage/prev/"), "runs/"))


def reproduce_command(command: str) -> tuple[str, str]:
    """A run's recorded command as someone with a clone and ``../shared`` runs it, and a note on what differs ("" if
    nothing does): a run on a lent GPU machine read JPEG quality-93 copies of the same crops from a staging folder
    (``.gpu/stage``) and started from earlier runs' bundles, which a clone has under ``runs/`` once trained."""
    out = command
    for pattern, repl in _STAGED:
        out = pattern.sub(repl, out)
    if out == command:
        return command, ""
    return out, ("The recorded run read JPEG quality-93 copies of the same crops and split on a GPU machine; this "
                 "command reads the originals" + (", and starts from bundles of earlier runs, under runs/ once trained"
                                                  if ".gpu/stage/prev/" in command else "") + ".")


def weights_label(source: str) -> str:
    s = (source or "").lower()
    if s.startswith("bundle:") and "(itself from " in s:  # fine-tuned from a bundle (--init-from): where it began
        return weights_label(s.split("(itself from ", 1)[1])
    if s.startswith("pip:"):
        return "ImageNet (pip)"
    if s.startswith("timm"):
        return "ImageNet (timm)"
    if s.startswith("file:"):
        return "ImageNet (file)"
    return "scratch"


PRETRAINED, SCRATCH = "ImageNet-initialised", "from scratch"


def weights_group(source: str) -> str:
    """PRETRAINED for ImageNet weights (pip package, timm download, weights file), else SCRATCH (random init)."""
    return SCRATCH if weights_label(source) == "scratch" else PRETRAINED


def load_summary(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "summary.json").read_text())


def find_studies(root: str | Path) -> list[Path]:
    """The study folders under ``root`` (``comparison*/`` with a ``summary.json``), complete studies before ones
    marked ``"partial"``, then the longest training budget (most epochs) first: the page opens on the first, so a
    real-budget study, once written, is shown before a short one, and a cut-short one is never the default."""
    folders = [p.parent for p in sorted(Path(root).glob("comparison*/summary.json"))]
    return sorted(folders, key=lambda f: (bool(load_summary(f).get("partial")),
                                          -(load_summary(f).get("budget", {}).get("epochs") or 0)))


def study_hardware(summary: dict, results: list[dict]) -> str:
    """Where the study trained: its summary's ``hardware``, else what its runs recorded."""
    return summary.get("hardware") or "; ".join(sorted({r["hardware"] for r in results if r.get("hardware")})) \
        or "hardware not recorded"


def study_label(summary: dict, results: list[dict]) -> str:
    """How the study picker names a study: its title (which states its budget), else its budget and hardware."""
    b = summary.get("budget", {})
    return summary.get("title") or \
        f"{b.get('epochs', '?')} epochs, {b.get('img_size', '?')} px, {study_hardware(summary, results)}"


BUDGET_WORDS = {"img_size": "{} px input", "epochs": "{} epochs", "batch_size": "batch {}", "lr": "AdamW lr {}",
                "weight_decay": "weight decay {}", "label_smoothing": "label smoothing {}",
                "balance": "class balancing: {}", "augment": "augmentation: {}",
                "time_budget_s": "at most {} s of training per run"}


def budget_text(budget: dict) -> str:
    """A study's budget in words ("128 px input, 3 epochs, batch 32, AdamW lr 0.001, ...")."""
    return ", ".join(BUDGET_WORDS.get(k, k.replace("_", " ") + " {}").format(v) for k, v in budget.items())


def changed_settings(result: dict, budget: dict) -> dict[str, str]:
    """The budget settings this run changed, read from its command line: {setting: the run's value}."""
    flags = dict(re.findall(r"--([\w-]+) (\S+)", result.get("command") or ""))
    out = {}
    for k, v in budget.items():
        got = flags.get(k.replace("_", "-"))
        try:
            same = got is None or float(got) == float(v)
        except (TypeError, ValueError):
            same = got == str(v)
        if not same:
            out[k] = got
    return out


def budget_changes(result: dict, budget: dict) -> str:
    """The budget settings this run changed, read from its command line ("lr 0.0003"), or ""."""
    return ", ".join(f"{k.replace('_', ' ')} {got}" for k, got in changed_settings(result, budget).items())


TABLE_START = "<!-- comparison table: generated by `python -m train.compare --table`, do not edit -->"
TABLE_END = "<!-- end of comparison table -->"


def markdown_table(results: list[dict]) -> str:
    """The study's results as a Markdown table, best test macro-F1 first (the table of docs/comparison.md)."""
    head = ("| model | weights | px | accuracy | macro-F1 | balanced acc. | min class F1 | ECE | params (M) | GFLOPs "
            "| CPU ms/cell | train min |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in sorted(results, key=lambda r: -r["metrics"]["macro_f1"]):
        m = r["metrics"]
        worst = min(m["per_class"].items(), key=lambda kv: kv[1]["f1"])
        rows.append(f"| {r['title']} | {weights_label(r.get('weights_source', ''))} | {r['img_size']} "
                    f"| {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['balanced_accuracy']:.3f} "
                    f"| {worst[1]['f1']:.2f} ({worst[0]}) | {m['ece']:.3f} | {r['parameters'] / 1e6:.2f} "
                    f"| {r.get('gflops', float('nan')):.2f} | {r.get('cpu_ms_per_cell', float('nan')):.1f} "
                    f"| {(r.get('train_seconds') or 0) / 60:.1f} |")
    return "\n".join([TABLE_START, head, *rows, TABLE_END])


def replace_table(text: str, table: str) -> str:
    """``text`` with the generated table between its markers replaced by ``table``."""
    a, b = text.index(TABLE_START), text.index(TABLE_END) + len(TABLE_END)
    return text[:a] + table + text[b:]


def lesson_facts(rows: list[dict]) -> dict:
    """What a class should know before reading a study's bars: how many networks, how many started from random
    weights and how many epochs those got (each row's own, a time guard may have cut it)."""
    scratch = [r for r in rows if weights_group(r.get("weights_source", "")) == SCRATCH]
    epochs = sorted(r["epochs"] for r in scratch if r.get("epochs"))
    return {"networks": len(rows), "scratch": len(scratch), "pretrained": len(rows) - len(scratch),
            "scratch_epochs": (epochs[0], epochs[-1]) if epochs else None,
            "scratch_under_20": sum(e < 20 for e in epochs)}


def like_with_like(results: list[dict], budget: dict, group: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """(the study's runs that started from ``group``'s weights and were trained with exactly the study's budget,
    [(title, what differs)] of that group's runs left out because a setting of theirs differed). Only these rows
    compare architectures: the same start, the same data, the same budget."""
    same, other = [], []
    for r in results:
        if weights_group(r.get("weights_source", "")) != group:
            continue
        changed = budget_changes(r, budget)
        (other.append((r["title"], changed)) if changed else same.append(r))
    return same, other


def by_epochs(rows: list[dict]) -> dict[int | None, list[dict]]:
    """The rows grouped by the epochs each run really got (a time guard can give runs of one budget different
    numbers), fewest first; None holds runs that recorded none."""
    out: dict[int | None, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r.get("epochs") is None, r.get("epochs") or 0)):
        out.setdefault(r.get("epochs"), []).append(r)
    return out


def published_figure(published: list[dict], seed: str, model: str, metric: str) -> float | None:
    """One figure of ``assets/published/seeds_published.csv`` (rows as dicts): the value a document (by its seed
    file number, which the page never shows) gives for ``model`` and ``metric``, or None where it gives none."""
    return next((float(p["value"]) for p in published if str(p["seed"]) == seed and p["model"] == model
                 and p["metric"] == metric), None)


def epochs_text(rows: list[dict]) -> str:
    """The epochs the rows got, in words: "3 epochs", "10 to 30 epochs", or "epochs not recorded"."""
    got = sorted({r["epochs"] for r in rows if r.get("epochs")})
    if not got:
        return "epochs not recorded"
    return f"{got[0]} epochs" if len(got) == 1 else f"{got[0]} to {got[-1]} epochs"
