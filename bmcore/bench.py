"""Latency and memory of the inference path, written as JSON (never asserted in tests).

Measures, on the machine it runs on: decode + preprocess alone, end-to-end ms per cell
(decode + preprocess + calibrated predict) at batch 1 and batch 64, the wall time of a
500-cell differential, Grad-CAM ms per cell for each CAM method, and peak memory.
Ratios between rows of one run are what to compare; machines here are shared and noisy.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from . import __version__
from .predictor import Predictor, cpu_bf16_supported
from .preprocess import IMAGE_SUFFIXES


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


def run_bench(bundle, data, cells: int = 500, cams: int = 20, device=None, out=None) -> int:
    files = _cells(data, cells)
    blobs = [p.read_bytes() for p in files]  # from memory, as an upload arrives
    precisions = ["fp32"]
    dev = torch.device(device) if device else None
    if (dev is None or dev.type == "cpu") and not torch.cuda.is_available() and cpu_bf16_supported():
        precisions.append("bf16")
    result: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                                "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                "torch": torch.__version__, "bmcore": __version__,
                                "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
                    "cells": cells, "data": Path(data).name, "runs": []}
    configs = [("fp32", None)] + [(p, None) for p in precisions[1:]]
    probe = Predictor(bundle, device=device)
    result["bundle"] = probe.bundle.name
    result["bundle_tta"] = probe.tta
    configs.append(("fp32", not probe.tta))  # the other TTA setting, for the speed/accuracy trade-off
    del probe
    for prec, tta in configs:
        p = Predictor(bundle, device=device, precision=prec, tta=tta)
        p.predict(blobs[:64])  # warm-up
        dec = _timeit(lambda: p.load_many(blobs), 2)
        b64 = _timeit(lambda: p.predict(blobs), 2)
        micro = p.batch_size
        p.batch_size = 1
        n1 = min(50, cells)
        b1 = _timeit(lambda: [p.predict([b]) for b in blobs[:n1]], 1)
        p.batch_size = micro
        run = {"precision": prec, "tta": p.tta, "device": str(p.device),
               "decode_preprocess_ms_per_cell": 1000 * dec / cells,
               "end_to_end_ms_per_cell_batch1": 1000 * b1 / n1,
               "end_to_end_ms_per_cell_batch64": 1000 * b64 / cells, "forward_micro_batch": micro,
               f"differential_{cells}_cells_seconds": b64}
        if prec == "fp32" and tta is None:  # Grad-CAM always runs in fp32, without TTA
            cam_ms = {}
            for method in ("gradcam", "gradcam++", "layercam", "eigencam"):
                p.explain(blobs[0], method=method)
                ts = []
                for b in blobs[:cams]:
                    t = time.perf_counter()
                    p.explain(b, method=method)
                    ts.append(time.perf_counter() - t)
                cam_ms[method] = 1000 * statistics.median(ts)
            run["gradcam_ms_per_cell_median"] = cam_ms
        result["runs"].append(run)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return 0
