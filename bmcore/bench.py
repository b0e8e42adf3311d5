"""Latency and memory of the inference path, written as JSON (never asserted in tests).

One run measures, on the machine it runs on, for each inference setting (torch fp32, ONNX fp32, ONNX int8;
each with and without 4-view TTA): ms per cell at batch 1 and the wall time of a 500-cell differential end to
end from JPEG bytes (decode, resize, model, gate, calibrated verdicts; model load excluded), the same with a
competing CPU-bound process pinned to one core, cold start to the first prediction and the peak memory of a
fresh process that loads that setting and classifies the 500 cells, and the val / test macro-F1 that
``train.export`` measured for that setting. Then, for the bundle's default setting, idle and with the competing
process: the cores side by side on parts of the batch (the default), one session on both cores (its threads
spin-waiting or not) and one core; and Grad-CAM per method. Ratios between rows of one
run are what to compare; machines here are shared and noisy.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .preprocess import IMAGE_SUFFIXES

SETTINGS = [("torch", "fp32", False), ("torch", "fp32", True), ("onnx", "fp32", False), ("onnx", "fp32", True),
            ("onnx", "int8", False), ("onnx", "int8", True)]

_COLD = """
import json, resource, sys, time
t0 = time.perf_counter()
from bmcore.predictor import Predictor
p = Predictor(sys.argv[1], engine=sys.argv[2], precision=sys.argv[3], tta=sys.argv[4] == "1")
blobs = [open(f, "rb").read() for f in sys.argv[5:]]
p.predict(blobs[:1])
cold = time.perf_counter() - t0
p.predict(blobs)
print(json.dumps({"import_load_first_prediction_s": cold,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def cpu_model() -> str:
    """The processor's name as /proc/cpuinfo gives it ("AMD EPYC ...", "Intel(R) Xeon(R) ..."): benchmark figures from
    two machines of the same core count differ by up to 2x, and results files must say which one measured them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_result(result: dict, out: str | Path | None) -> int:
    """A benchmark's figures: printed as JSON, and written to ``out`` when given; returns 0 (the exit status)."""
    import json

    text = json.dumps(result, indent=1)
    if out:
        Path(out).write_text(text + "\n")
    print(text)
    return 0


def _cells(data: str | Path, n: int) -> list[Path]:
    files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images under {data}")
    step = max(1, len(files) // n)
    picked = files[::step][:n]
    while len(picked) < n:  # fewer images than asked: cycle
        picked += files[: n - len(picked)]
    return picked


def _timeit(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@contextmanager
def competing_process(core: int = 0):
    """A CPU-bound process pinned to one core for the duration (a lab server is never idle)."""
    cmd = [sys.executable, "-c", "while True: pass"]
    proc = subprocess.Popen(["taskset", "-c", str(core), *cmd] if _has("taskset") else cmd)
    time.sleep(0.3)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def _has(tool: str) -> bool:
    from shutil import which

    return which(tool) is not None


@contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cold(bundle, engine, precision, tta, files) -> dict:
    repo = Path(__file__).resolve().parent.parent
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _COLD, str(bundle), engine, precision, "1" if tta else "0",
                          *map(str, files)], capture_output=True, text=True, cwd=repo,
                         env={**os.environ, "PYTHONPATH": str(repo)})
    wall = time.perf_counter() - t
    if out.returncode:
        return {"error": out.stderr[-500:]}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"cold_start_s": r["import_load_first_prediction_s"], "process_wall_s": wall,
            "peak_rss_mib": r["peak_rss_mib"]}


def run_bench(bundle, data, cells: int = 500, cams: int = 20, device=None, out=None) -> int:
    import torch

    from .bundle import load_bundle
    from .engine import inference_threads, onnxruntime_available
    from .predictor import Predictor

    files = _cells(data, cells)
    blobs = [p.read_bytes() for p in files]  # from memory, as an upload arrives
    b = load_bundle(bundle)
    inf = b.meta.get("inference", {})
    figures = {(r["engine"], r["precision"], r["tta"]): r for r in inf.get("settings", [])}
    default = Predictor(b, device=device)
    result: dict = {"machine": {"platform": platform.platform(), "cpu_model": cpu_model(),
                                "cpu_count": os.cpu_count(), "inference_threads": inference_threads(),
                                "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                                "bmcore": __version__, "competing_process": "taskset -c 0 python busy loop"
                                if _has("taskset") else "python busy loop (no taskset: not pinned)",
                                "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
                    "cells": cells, "data": Path(data).name, "bundle": b.name,
                    "default_setting": default.setting, "rows": []}
    settings = [s for s in SETTINGS if s[0] == "torch" or (onnxruntime_available() and b.meta.get("onnx"))]
    for engine, precision, tta in settings:
        p = Predictor(b, device=device, engine=engine, precision=precision, tta=tta)
        p.predict(blobs[:64])  # warm-up
        e2e = _timeit(lambda: p.predict(blobs), 2)
        n1 = min(50, cells)
        b1 = _timeit(lambda: [p.predict([x]) for x in blobs[:n1]], 1)
        with competing_process():
            loaded = _timeit(lambda: p.predict(blobs), 1)
        fig = figures.get((engine, precision, tta), {})
        row = {"setting": p.setting, "engine": engine, "precision": precision, "tta": tta,
               "ms_per_cell_batch1": 1000 * b1 / n1,
               f"differential_{cells}_cells_s": e2e,
               f"differential_{cells}_cells_s_with_competing_process": loaded,
               "val_macro_f1": fig.get("val_macro_f1"), "test_macro_f1": fig.get("test_macro_f1"),
               "f1_source": f"train.export on the splits of bundle.json (val {fig.get('val_n')}, test "
                            f"{fig.get('test_n')} crops)" if fig else "not measured",
               **_cold(b.path, engine, precision, tta, files)}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        del p
    # how the default setting uses the cores, idle and under load: the cores side by side on parts of the batch
    # (one-thread sessions: the default), one session on all cores (threads spin-waiting or not), one core
    if default.engine == "onnx":
        grid = []
        for threads, parallel, spin in ((2, True, "0"), (2, False, "0"), (2, False, "1"), (1, False, "0")):
            with _env(BM_INFERENCE_THREADS=threads, BM_INFERENCE_SPIN=spin):
                p = Predictor(b, device=device, parallel=parallel)
                p.predict(blobs[:64])
                idle = _timeit(lambda: p.predict(blobs), 1)
                with competing_process():
                    loaded = _timeit(lambda: p.predict(blobs), 1)
            grid.append({"threads": threads, "cores_side_by_side": parallel and threads > 1,
                         "spin_wait": spin == "1", f"differential_{cells}_cells_s": idle,
                         f"differential_{cells}_cells_s_with_competing_process": loaded})
            print(json.dumps(grid[-1]), flush=True)
        result["threads_under_load"] = grid
    cam_ms = {}
    for method in ("gradcam", "gradcam++", "layercam", "eigencam"):
        default.explain(blobs[0], method=method)
        ts = []
        for x in blobs[:cams]:
            t = time.perf_counter()
            default.explain(x, method=method)
            ts.append(time.perf_counter() - t)
        cam_ms[method] = 1000 * statistics.median(ts)
    result["gradcam_ms_per_cell_median"] = cam_ms
    result["bench_process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return 0
