"""Fit, calibrate and measure a bundle's quality + out-of-distribution gate (``bmcore.ood``).

    python -m train.ood --bundle assets/models/bm14-mobilenetv2-224px \
        --splits train/splits/bm-dev_seed42.csv --data-root ../shared/data/bm-dev

* fitted on the **train** split's features (the crops the model was trained on);
* threshold calibrated on the **val** split (held-out, in distribution) to reject at most 5% of it;
* measured on data the gate never saw: the **test** split (how many real crops it wrongly refuses,
  per class) and an out-of-distribution corpus (``ood_corpus``) of whole-field mosaics, lower
  magnification, blurred and blank crops made from test crops, photos and a tissue stain from
  scikit-image's bundled samples, screenshots and noise; AUROC against the test split.

Writes ``ood.safetensors`` + ``bundle.json["ood"]`` (settings and headline figures) and
``eval_ood.json`` (everything) beside the bundle. ``train.train`` runs this when ``gate: true``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from sklearn.metrics import roc_auc_score

from bmcore.bundle import Bundle, load_bundle, save_gate
from bmcore.metrics import softmax
from bmcore.ood import REASON_BLANK, REASON_BLUR, energy, fit_gate, quality_stats
from bmcore.predictor import Predictor
from bmcore.preprocess import decode_image, normalize, resize_rgb, to_uint8_tensor

from .data import load_splits
from .evaluate import bundle_parser, split_batches

SKIMAGE_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text", "horse",
                   "hubble_deep_field", "brick", "grass", "gravel", "cell", "clock", "colorwheel", "logo")


def gate_inputs(predictor: Predictor, batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, features, quality stats) of uint8 NCHW batches at the model's input size."""
    lg, ft, q = [], [], []
    for xb in batches:
        a, b = predictor.outputs(normalize(xb, predictor.cfg))
        lg.append(a)
        ft.append(b)
        q.extend(quality_stats(t.permute(1, 2, 0).numpy()) for t in xb)
    return np.concatenate(lg), np.concatenate(ft), np.asarray(q, np.float64)


def _to_batches(predictor: Predictor, images: list[Image.Image], batch: int = 64):
    for i in range(0, len(images), batch):
        yield torch.stack([to_uint8_tensor(resize_rgb(im, predictor.cfg)) for im in images[i:i + batch]])


# --- the out-of-distribution corpus ------------------------------------------------------------------


def _border_colour(im: Image.Image) -> tuple[int, ...]:
    a = np.asarray(im.convert("RGB"))
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(v) for v in np.median(edge, 0))


def _screenshot(rng: np.random.Generator, size: int = 320) -> Image.Image:
    bg = tuple(int(v) for v in rng.integers(225, 256, 3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    d.rectangle([0, 0, size, 24], fill=tuple(int(v) for v in rng.integers(30, 120, 3)))
    y = 34
    while y < size - 16:
        if rng.random() < 0.25:
            x0 = int(rng.integers(8, size // 2))
            d.rectangle([x0, y, x0 + int(rng.integers(40, 120)), y + 18], outline=(90, 90, 90),
                        fill=tuple(int(v) for v in rng.integers(150, 250, 3)))
        words = " ".join("".join(chr(int(c)) for c in rng.integers(97, 123, int(rng.integers(2, 9))))
                         for _ in range(int(rng.integers(3, 9))))
        d.text((10, y), words, fill=(20, 20, 20), font=font)
        y += int(rng.integers(14, 26))
    return im


def _skimage_photos() -> list[Image.Image]:
    try:
        from skimage import data as skd
    except ImportError:
        return []
    out = []
    for name in SKIMAGE_SAMPLES:
        try:
            a = np.asarray(getattr(skd, name)())
        except Exception:  # a sample that must be downloaded (no network) or is missing in this version
            continue
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        if a.dtype != np.uint8:
            a = (255 * (a - a.min()) / max(1e-9, float(a.max() - a.min()))).astype(np.uint8)
        out.append(Image.fromarray(a).convert("RGB"))
    return out


def _random_square(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    side = int(min(w, h) * rng.uniform(0.35, 1.0))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    return im.crop((x, y, x + side, y + side))


def ood_corpus(crops: list[Image.Image], n: int = 40, seed: int = 0) -> dict[str, list[Image.Image]]:
    """Images the classifier should not judge, by kind. ``crops``: held-out in-distribution crops to derive from."""
    rng = np.random.default_rng(seed)

    def pick(k=1):
        return [crops[int(i)] for i in rng.integers(0, len(crops), k)]

    out: dict[str, list[Image.Image]] = {}
    fields = []
    for _ in range(n):  # a smear field: many cells at a lower magnification in one image
        g = int(rng.integers(3, 6))
        tile = 250 // g
        field = Image.new("RGB", (tile * g, tile * g))
        for j, c in enumerate(pick(g * g)):
            field.paste(c.resize((tile, tile)), ((j % g) * tile, (j // g) * tile))
        fields.append(field)
    out["smear field (mosaic)"] = fields
    low = []
    for c in pick(n):  # one cell at a much lower magnification, on its own background
        s = float(rng.uniform(0.2, 0.4))
        small = c.resize((int(250 * s), int(250 * s)))
        bg = Image.new("RGB", (250, 250), _border_colour(c))
        bg.paste(small, (int(rng.integers(0, 250 - small.width)), int(rng.integers(0, 250 - small.height))))
        low.append(bg)
    out["lower magnification"] = low
    out["blurred crop"] = [c.filter(ImageFilter.GaussianBlur(float(rng.uniform(6, 12)))) for c in pick(n)]
    blank = []
    for c in pick(n):
        a = np.full((250, 250, 3), _border_colour(c), np.float32) + rng.normal(0, 1.5, (250, 250, 3))
        blank.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
    out["blank crop"] = blank
    photos = _skimage_photos()
    if photos:
        out["photo (scikit-image samples)"] = [_random_square(photos[i % len(photos)], rng) for i in range(n)]
    try:
        from skimage import data as skd
        ihc = Image.fromarray(skd.immunohistochemistry())
        out["tissue, other stain (IHC sample)"] = [_random_square(ihc, rng) for _ in range(max(10, n // 2))]
    except Exception:
        pass
    out["screenshot"] = [_screenshot(rng) for _ in range(n)]
    out["noise"] = [Image.fromarray(rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)) for _ in range(n // 2)]
    return out


# --- fit + measure --------------------------------------------------------------------------------------


def _auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))


def fit_and_measure(bundle: Bundle | str | Path, data_root, splits_csv, *, n_ood: int = 40, seed: int = 0,
                    target_rejection: float = 0.04, write: bool = True) -> dict:
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    pred = Predictor(bundle, gate=False)
    parts = {}
    for split in ("train", "val", "test"):
        y, batches = split_batches(pred, data_root, splits_csv, split)
        parts[split] = (*gate_inputs(pred, batches), y)
    (_, ftr, qtr, ytr), (lva, fva, qva, _), (lte, fte, qte, yte) = parts["train"], parts["val"], parts["test"]
    gate = fit_gate(ftr, ytr, qtr, fva, lva, qva, target_rejection=target_rejection)

    df = load_splits(splits_csv)
    test_paths = df[(df.split == "test") & df.label.isin(pred.classes)].path.tolist()
    rng = np.random.default_rng(seed)
    src = [decode_image(Path(data_root) / test_paths[int(i)])
           for i in rng.choice(len(test_paths), min(200, len(test_paths)), replace=False)]
    corpus = ood_corpus(src, n=n_ood, seed=seed)

    def judged(lg, ft, q):
        reasons, s = gate.reasons(ft, lg, q)
        refused = np.array([bool(r) for r in reasons])
        # for AUROC, a crop refused by a quality check ranks above every score
        s_eff = np.where([r in (REASON_BLANK, REASON_BLUR) for r in reasons], 1e6, s)
        msp = 1 - softmax(lg, 1.0).max(1)
        return {"reasons": reasons, "refused": refused, "score": s_eff, "maha": gate.mahalanobis(ft),
                "energy": energy(lg), "msp": msp}

    val = judged(lva, fva, qva)
    test = judged(lte, fte, qte)
    per_class = {c: float(test["refused"][yte == i].mean()) for i, c in enumerate(pred.classes) if (yte == i).any()}
    kinds, all_out = {}, {k: [] for k in ("score", "maha", "energy", "msp")}
    for kind, images in corpus.items():
        r = judged(*gate_inputs(pred, _to_batches(pred, images)))
        for k in all_out:
            all_out[k].append(r[k])
        kinds[kind] = {"n": len(images), "refused": float(r["refused"].mean()),
                       "auroc_vs_test": _auroc(test["score"], r["score"]),
                       "reasons": {x: int(sum(1 for y in r["reasons"] if y == x)) for x in sorted(set(r["reasons"])) if x}}
    out_cat = {k: np.concatenate(v) for k, v in all_out.items()}
    auroc = {"gate": _auroc(test["score"], out_cat["score"]), "mahalanobis_only": _auroc(test["maha"], out_cat["maha"]),
             "energy_only": _auroc(test["energy"], out_cat["energy"]),
             "max_softmax_baseline": _auroc(test["msp"], out_cat["msp"])}
    report = {
        "bundle": bundle.name, "weights_sha256": bundle.sha256,
        "fitted_on": f"train split of {Path(splits_csv).name} ({len(ytr)} crops, {Path(data_root).name})",
        "calibrated_on": f"val split of {Path(splits_csv).name} ({len(lva)} crops)",
        "target_rejection": target_rejection,
        "val_rejection": float(val["refused"].mean()),
        "test_rejection": float(test["refused"].mean()),
        "test_rejection_per_class": per_class,
        "test_split": f"test split of {Path(splits_csv).name} ({len(lte)} crops): never used for fitting or calibration",
        "ood_images": int(sum(v["n"] for v in kinds.values())),
        "ood_refused": sum(v["refused"] * v["n"] for v in kinds.values()) / max(1, sum(v["n"] for v in kinds.values())),
        "auroc": auroc, "by_kind": kinds, "tta": pred.tta, "seed": seed,
        "command": f"python -m train.ood --bundle {bundle.path} --splits {splits_csv} --data-root {data_root}",
    }
    if write:
        (bundle.path / "eval_ood.json").write_text(json.dumps(report, indent=1))
        save_gate(bundle, gate, **{k: report[k] for k in ("fitted_on", "calibrated_on", "target_rejection",
                                                          "val_rejection", "test_rejection", "auroc", "ood_images")})
    return report


def main(argv=None) -> int:
    ap = bundle_parser("python -m train.ood", __doc__)
    ap.add_argument("--n-ood", type=int, default=40, help="images per out-of-distribution kind")
    ap.add_argument("--target-rejection", type=float, default=0.04)
    a = ap.parse_args(argv)
    r = fit_and_measure(a.bundle, a.data_root, a.splits, n_ood=a.n_ood, target_rejection=a.target_rejection)
    print(f"refused: val {r['val_rejection']:.3f}, test {r['test_rejection']:.3f} (in distribution); "
          f"{r['ood_refused']:.3f} of {r['ood_images']} out-of-distribution images")
    print("AUROC vs test: " + ", ".join(f"{k} {v:.3f}" for k, v in r["auroc"].items()))
    for kind, v in r["by_kind"].items():
        print(f"  {kind:34s} n={v['n']:3d} refused {v['refused']:.2f} AUROC {v['auroc_vs_test']:.3f} {v['reasons']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
