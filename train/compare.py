"""Comparison study: several backbones, one split, one budget, measured the same way.

    python -m train.compare --config train/configs/compare.yaml [--only resnet50,vit_small] [--out assets/comparison]

The YAML names a shared ``budget`` (any train.train settings: image size, epochs, batch size,
optimiser) and a list of ``runs`` (``key``, ``backbone``, optional ``weights`` and overrides, e.g.
the ablations). Each run trains through ``train.train`` on the same split, is evaluated on the same
test split by ``train.evaluate``, then timed on the CPU; one JSON per run (schema in
``bmcore.comparison``) and ``summary.json`` are written for the Model comparison page.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from bmcore.bundle import load_bundle
from bmcore.comparison import load_results, markdown_table, replace_table, result_from_bundle, validate
from bmcore.predictor import Predictor
from bmcore.preprocess import IMAGE_SUFFIXES

REPO = Path(__file__).resolve().parents[1]


def gflops(bundle) -> float:
    """Forward GFLOPs for one crop at the bundle's input size (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = bundle.build_model()
    s = bundle.data_config.input_size
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.zeros(1, 3, s, s))
    return fc.get_total_flops() / 1e9


def cpu_ms_per_cell(bundle, data_root: Path, n: int = 64) -> float:
    """CPU time per crop through the app's Predictor (weights do not change it: an untrained copy times the same)."""
    files = sorted(p for p in data_root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:: 50][:n]
    blobs = [p.read_bytes() for p in files]
    pred = Predictor(bundle, device="cpu")
    pred.predict(blobs[:8])
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        pred.predict(blobs)
        best = min(best, time.perf_counter() - t)
    return 1000 * best / len(blobs)


def stand_in(result: dict, folder: Path):
    """An untrained bundle of the same backbone, size and classes as ``result``: it times the same on a CPU."""
    from bmcore.backbones import create, get_backbone
    from bmcore.bundle import save_bundle
    from bmcore.preprocess import DataConfig

    spec, size = get_backbone(result["backbone"]), int(result["img_size"])
    classes = list(result["metrics"]["per_class"])
    return save_bundle(folder, create(result["backbone"], len(classes), img_size=size).eval(), task="bm14",
                       classes=classes, backbone=result["backbone"], data_config=DataConfig(size, spec.mean, spec.std))


def retime(out_dir: Path, runs_dir: Path, data_root: Path) -> int:
    """Re-measure ``cpu_ms_per_cell`` (and GFLOPs) of every result in one process, so the rows are comparable.

    A result whose bundle is not under ``runs_dir`` (trained on another machine) is timed through an
    untrained stand-in of the same architecture, input size and classes: the weights' values do not
    change the time.
    """
    import tempfile

    for f in sorted(out_dir.glob("*.json")):
        if f.name == "summary.json":
            continue
        r = json.loads(f.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            b = runs_dir / r["key"] / "bundle"
            bundle = load_bundle(b) if b.is_dir() else stand_in(r, Path(tmp) / "b")
            r["cpu_ms_per_cell"] = cpu_ms_per_cell(bundle, data_root)
            r["gflops"] = gflops(bundle)
        how = "its bundle" if b.is_dir() else "an untrained stand-in of the same architecture"
        r["cpu_timed"] = (f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC on {platform.node() or 'this machine'},"
                          f" {torch.get_num_threads()} threads, through {how}; all results re-timed in one run")
        f.write_text(json.dumps(r, indent=1))
        print(f"{r['key']:28s} {r['cpu_ms_per_cell']:.1f} ms/cell", flush=True)
    return 0


def run_one(run: dict, budget: dict, common: dict, out_dir: Path, runs_dir: Path, cpu_timing: bool = True) -> dict:
    key = run["key"]
    settings = {**budget, **{k: v for k, v in run.items() if k not in ("key", "title", "note")}}
    args = []
    for k, v in {**common, **settings, "out": str(runs_dir / key), "bundle_name": f"compare-{key}"}.items():
        args += ["--" + k.replace("_", "-"), str(v).lower() if isinstance(v, bool) else str(v)]
    cmd = [sys.executable, "-m", "train.train", *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{key}: training failed:\n{r.stderr[-3000:]}")
    bundle = load_bundle(runs_dir / key / "bundle")
    res = result_from_bundle(bundle)
    res.update({"key": key, "title": run.get("title", key), "note": run.get("note", ""),
                "gflops": gflops(bundle),
                "cpu_ms_per_cell": cpu_ms_per_cell(bundle, Path(common["data_root"])) if cpu_timing else None,
                "wall_seconds": time.perf_counter() - t0,
                "command": "python -m train.train " + " ".join(shlex.quote(a) for a in args),
                "hardware": bundle.meta["training"]["hardware"], "measured_on": platform.node() or "",
                "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None})
    problems = validate(res)
    if problems:
        raise RuntimeError(f"{key}: result does not match the schema: {problems}")
    (out_dir / f"{key}.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--only", default="", help="comma-separated run keys")
    ap.add_argument("--out", default=None, help="result folder (default: the config's out)")
    ap.add_argument("--runs-dir", default="runs/compare")
    ap.add_argument("--retime", action="store_true",
                    help="only re-measure CPU ms/cell of every committed result, all in this one run (a quiet machine "
                         "makes the rows comparable), from the bundles kept under --runs-dir")
    ap.add_argument("--parallel", type=int, default=1, help="runs trained at once (one GPU is shared well by small "
                    "networks); each run's result is the same as alone, its wall time is not")
    ap.add_argument("--deadline-s", type=float, default=0, help=">0: start no run after this many seconds")
    ap.add_argument("--override", default="", metavar="K=V,...", help="budget settings on top of the YAML's "
                    "(e.g. a smoke test: limit_per_class=4,max_steps=2)")
    ap.add_argument("--no-cpu-timing", action="store_true", help="skip CPU ms/cell (a GPU machine's CPU is not the "
                    "app's); measure it later here with --retime")
    ap.add_argument("--table", metavar="MARKDOWN", default=None,
                    help="only rewrite the generated results table inside this Markdown file (e.g. docs/comparison.md)")
    a = ap.parse_args(argv)
    cfg = yaml.safe_load(Path(a.config).read_text())
    out_dir = Path(a.out or cfg.get("out", "assets/comparison"))
    if a.retime:
        return retime(out_dir, Path(a.runs_dir), Path(cfg["common"]["data_root"]))
    if a.table:
        doc = Path(a.table)
        doc.write_text(replace_table(doc.read_text(), markdown_table(load_results(out_dir))))
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(a.runs_dir)
    only = {k for k in a.only.split(",") if k}
    common = cfg["common"]
    for kv in filter(None, a.override.split(",")):
        k, v = kv.split("=", 1)
        cfg["budget"][k] = yaml.safe_load(v)
    runs = [r for r in cfg["runs"] if not only or r["key"] in only]
    t_start = time.monotonic()

    def one(run: dict) -> str | None:
        if a.deadline_s and time.monotonic() - t_start > a.deadline_s:
            print(f"== {run['key']}: not started (past the {a.deadline_s:.0f}s deadline)", flush=True)
            return None
        print(f"== {run['key']}", flush=True)
        try:
            r = run_one(run, cfg["budget"], common, out_dir, runs_dir, cpu_timing=not a.no_cpu_timing)
        except Exception as exc:  # one failed run is reported; the others go on
            print(f"== {run['key']} FAILED: {exc}", flush=True)
            return None
        m = r["metrics"]
        print(f"== {run['key']}: macro-F1 {m['macro_f1']:.4f} acc {m['accuracy']:.4f} ECE {m['ece']:.4f} "
              f"{r['wall_seconds'] / 60:.1f} min", flush=True)
        return r["key"]

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, a.parallel)) as ex:
        done = [k for k in ex.map(one, runs) if k]
    failed = [r["key"] for r in runs if r["key"] not in done]
    summary_path = out_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.update({"budget": cfg["budget"], "split": common.get("splits"), "data": Path(common["data_root"]).name,
                    "config": Path(a.config).name})
    summary["runs"] = sorted(set(summary.get("runs", [])) | set(done))
    summary.update({k: cfg[k] for k in ("title", "note") if k in cfg})
    summary_path.write_text(json.dumps(summary, indent=1))
    if failed:
        print(f"not done: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
