"""Another laboratory, simulated: does learning from its signed cells close the gap its camera and stain open?

The crops the default model never trained on (the val and test splits of ``train/splits/bm-dev_seed42.csv``) are
shown as another lab's camera and stain would show them (``shift``: white balance, stain balance, magnification,
optics blur and JPEG compression of our own choosing, the same for every crop), and grouped into simulated cases of
``--case-size`` cells (seeded). ``python -m train.learn --from-folder`` then holds half of the cases out as the lab
test (by a hash of the case id: its stated rule), learns from the other half (minus its validation cases) with the
reference training split replayed, and measures the default and the candidate as the app runs them (ONNX, one view,
gate on; refusals counted as errors) on the lab-test half and on the reference test split. No timing is asserted;
the learning time is recorded with the machine.

    .venv/bin/python bench/lab_learning.py --out bench/results/lab_learning.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmcore.bench import cpu_model, write_result  # noqa: E402

SHIFT = {"white_balance_rgb": (1.08, 0.97, 0.88), "hue_shift": 0.025, "saturation": 1.3, "zoom": 1.15,
         "blur_radius": 0.8, "jpeg_quality": 80}


def scaled(scale: float) -> dict:
    """``SHIFT`` with every departure from "no change" multiplied by ``scale`` (2: twice as far from the reference)."""
    return {"white_balance_rgb": tuple(1 + scale * (g - 1) for g in SHIFT["white_balance_rgb"]),
            "hue_shift": scale * SHIFT["hue_shift"], "saturation": 1 + scale * (SHIFT["saturation"] - 1),
            "zoom": 1 + scale * (SHIFT["zoom"] - 1), "blur_radius": scale * SHIFT["blur_radius"],
            "jpeg_quality": max(10, round(100 - scale * (100 - SHIFT["jpeg_quality"])))}


def shift(data: bytes, s: dict = SHIFT) -> bytes:
    """A crop as another lab's camera and stain would show it (``SHIFT``)."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    a = np.asarray(im, np.float32) * np.array(s["white_balance_rgb"], np.float32)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    hsv = np.asarray(im.convert("HSV"), np.float32)
    hsv[..., 0] = (hsv[..., 0] + 255 * s["hue_shift"]) % 255
    hsv[..., 1] = np.clip(hsv[..., 1] * s["saturation"], 0, 255)
    im = Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    cw, ch = round(w / s["zoom"]), round(h / s["zoom"])
    im = im.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)).resize((w, h), Image.BILINEAR)
    im = im.filter(ImageFilter.GaussianBlur(s["blur_radius"]))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=s["jpeg_quality"])
    return out.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "bm-dev"), help="the crops")
    ap.add_argument("--splits", default=str(REPO / "train" / "splits" / "bm-dev_seed42.csv"), help="split file")
    ap.add_argument("--case-size", type=int, default=40, help="cells per simulated case")
    ap.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs")
    ap.add_argument("--seed", type=int, default=0, help="seed of the grouping into cases")
    ap.add_argument("--shift-scale", type=float, default=1.0, help="how far the simulated lab is from the reference "
                                                                    "(2: every departure of SHIFT doubled)")
    ap.add_argument("--learn-args", default="", help="more flags for train.learn, e.g. \"--lr 1e-4\"")
    ap.add_argument("--out", default=None, help="JSON to write")
    a = ap.parse_args(argv)
    with open(a.splits) as f:
        rows = [r for r in csv.DictReader(f) if r["split"] in ("val", "test")]
    random.Random(a.seed).shuffle(rows)
    tmp = Path(tempfile.mkdtemp(prefix="lab_learning_"))
    lab = tmp / "lab"
    for i, r in enumerate(rows):
        case = f"case_{i // a.case_size:03d}"
        p = lab / r["label"] / case / Path(r["path"]).name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(shift((Path(a.data_root) / r["path"]).read_bytes(), scaled(a.shift_scale)))
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "train.learn", "--from-folder", str(lab), "--out", str(tmp / "out"), "--name",
           "shifted", "--lab-test-share", "0.5", "--epochs", str(a.epochs), "--reference-root", a.data_root,
           "--reference-splits", a.splits, "--seed", str(a.seed), *a.learn_args.split()]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        print(r.stdout[-4000:], r.stderr[-4000:], file=sys.stderr)
        return r.returncode
    rep = json.loads((tmp / "out" / "shifted" / "report.json").read_text())
    cur, cand = rep["figures"]["current"], rep["figures"]["candidate"]
    out = {
        "what": "the default and a candidate learnt from a simulated lab's signed half, measured as the app runs them",
        "data": f"val + test splits of {Path(a.splits).name} ({len(rows)} crops the default never trained on), "
                f"shifted by {scaled(a.shift_scale)}, in cases of {a.case_size} cells (seed {a.seed}); lab test: half of the cases by a "
                "hash of the case id (train.learn --lab-test-share 0.5)",
        "command": " ".join(["bench/lab_learning.py", *(argv or sys.argv[1:])]), "learn_command": rep["command"],
        "machine": cpu_model(), "cells_per_side": {k: sum(v.values()) for k, v in rep["cells_per_side"].items()},
        "cases_per_side": {k: len(v) for k, v in rep["cases"].items()},
        "default_lab_test": cur["lab_test"], "candidate_lab_test": cand["lab_test"],
        "default_reference_test": cur.get("reference_test"), "candidate_reference_test": cand.get("reference_test"),
        "criteria": rep["criteria"], "passed": rep["passed"], "failures": rep["failures"],
        "learn_train_seconds": rep["train_seconds"], "learn_total_seconds": rep["seconds"],
        "wall_seconds": round(seconds, 1),
        "note": "macro-F1 with refusals counted as errors (the app's gate on), over the classes of the lab-test cells",
    }
    ref = cur.get("reference_test") or {}
    if ref.get("macro_f1") is not None:
        out["goal_within_0.02_of_default_in_domain"] = cand["lab_test"]["macro_f1"] >= ref["macro_f1"] - 0.02
    return write_result(out, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
