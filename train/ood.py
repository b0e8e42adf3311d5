"""Fit, calibrate and measure a bundle's quality + out-of-distribution gate (``bmcore.ood``).

    python -m train.ood --bundle assets/models/bm14-mobilenetv2-224px \
        --splits train/splits/bm-dev_seed42.csv --data-root ../shared/data/bm-dev [--measure-only]

* fitted on the **train** split's features (the crops the model was trained on), which also give the
  training crop size that the input-size rule (``bmcore.ood.size_refusal``) is relative to;
* threshold calibrated on the **val** split (held-out, in distribution) to reject ``--target-rejection`` of it;
* measured **as the app runs it** (``measure``: the real ``Predictor`` with the bundle's chosen engine,
  precision and TTA, input-size rule and gate on, over the image files) on data the gate never saw: the
  **test** split (how many real crops it wrongly refuses, per class, with a 95% interval); an
  out-of-distribution corpus (``ood_corpus``) of whole-field mosaics, lower magnification, blurred and blank
  crops made from test crops, photos and a tissue stain from scikit-image's bundled samples, screenshots and
  noise (AUROC of the gate's score against the test split); mosaics of real crops at their own scale, up to a
  4000x3000 camera field (``field_mosaic``); and the white cells boxed in real peripheral-blood smear fields
  (``--fields``, default ``<data-root>/../fields/bccd`` when present; ``bccd_white_cells``): how many the gate
  lets through with a confident label.

Writes ``ood.safetensors`` + ``bundle.json["ood"]`` (settings, what it was fitted on) and ``eval_ood.json``
(every measured figure, with the inference setting it was measured under) beside the bundle. ``--measure-only``
keeps the bundle's fitted gate and rewrites ``eval_ood.json`` alone: run it after anything that changes what the
app runs (``train.export`` does). ``train.train`` runs the whole thing when ``gate: true``.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from sklearn.metrics import roc_auc_score

from bmcore.bundle import Bundle, load_bundle, save_gate
from bmcore.metrics import softmax
from bmcore.metrics import wilson_interval
from bmcore.ood import MAX_CROP_SCALE, REASON_FIELD, REASON_OOD, energy, fit_gate, quality_stats
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


def field_mosaic(crops: list[Image.Image], cols: int, rows: int, size: tuple[int, int] | None = None) -> Image.Image:
    """Real crops at their own scale on a ``cols`` x ``rows`` grid (touching, or spread over ``size`` on the first
    crop's background colour): a camera field or a mosaic of cells, as a user might upload one by mistake."""
    side = crops[0].width
    w, h = size or (cols * side, rows * side)
    field = Image.new("RGB", (w, h), _border_colour(crops[0]))
    for j in range(cols * rows):
        field.paste(crops[j % len(crops)], (j % cols * w // cols, j // cols * h // rows))
    return field


def bccd_white_cells(root: str | Path, crop_side: int, margin: float = 1.6) -> list[tuple[str, Image.Image]]:
    """Every white cell (``WBC``) boxed in a Pascal VOC folder of smear fields (BCCD), as a user would crop it: a
    square around its box, ``margin`` x the box's longer side (a training crop is ~1.6 cell diameters wide) and
    moved inside the field, resized to ``crop_side``. Returns (``<field stem>#<box>``, crop)."""
    root, out = Path(root), []
    for xml in sorted((root / "Annotations").glob("*.xml")):
        boxes = [[int(float(o.find("bndbox").findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")]
                 for o in ET.parse(xml).getroot().iter("object") if o.findtext("name") == "WBC"]
        if not boxes:
            continue
        field = decode_image(root / "JPEGImages" / f"{xml.stem}.jpg")
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            side = min(round(margin * max(x1 - x0, y1 - y0)), *field.size)
            left = int(min(max((x0 + x1 - side) / 2, 0), field.width - side))
            top = int(min(max((y0 + y1 - side) / 2, 0), field.height - side))
            crop = field.crop((left, top, left + side, top + side)).resize((crop_side, crop_side), Image.BILINEAR)
            out.append((f"{xml.stem}#{i}", crop))
    return out


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

FIT_KEYS = ("fitted_on", "calibrated_on", "fitted_with", "target_rejection", "val_rejection", "crop_side")
# mosaics of real crops at their own scale: name -> (columns, rows, image size; None: crops touching)
MOSAICS = {"camera field, 150 crops (4000x3000 px)": (15, 10, (4000, 3000)),
           "mosaic of 4x4 crops (1000x1000 px)": (4, 4, None),
           "mosaic of 3x3 crops (750x750 px)": (3, 3, None),
           "mosaic of 2x2 crops (500x500 px)": (2, 2, None)}


def _auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))


def _counts(values) -> dict[str, int]:
    """How often each non-empty value occurs; the input-size rule's messages (they name the size) as one."""
    values = [REASON_FIELD if REASON_FIELD in v else v for v in values if v]
    return {v: values.count(v) for v in sorted(set(values))}


def _split_files(data_root, splits_csv, split: str, classes: list[str]) -> tuple[list[Path], list[str]]:
    df = load_splits(splits_csv)
    df = df[(df.split == split) & df.label.isin(classes)]
    return [Path(data_root) / p for p in df.path], df.label.tolist()


def _longer_side(path: Path) -> int:
    with Image.open(path) as im:  # the header only
        return max(im.size)


def fit(bundle: Bundle | str | Path, data_root, splits_csv, *, target_rejection: float = 0.04) -> dict:
    """Fit the gate on the train split's features, calibrate its threshold on the val split and store it in the
    bundle with what it was fitted on (``bundle.json["ood"]``), which this returns."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    pred = Predictor(bundle, gate=False)
    parts = {}
    for split in ("train", "val"):
        y, batches = split_batches(pred, data_root, splits_csv, split)
        parts[split] = (*gate_inputs(pred, batches), y)
    (_, ftr, qtr, ytr), (lva, fva, qva, _) = parts["train"], parts["val"]
    gate = fit_gate(ftr, ytr, qtr, fva, lva, qva, target_rejection=target_rejection)
    val_reasons, _ = gate.reasons(fva, lva, qva)
    train_files, _ = _split_files(data_root, splits_csv, "train", pred.classes)
    record = {"fitted_on": f"train split of {Path(splits_csv).name} ({len(ytr)} crops, {Path(data_root).name})",
              "calibrated_on": f"val split of {Path(splits_csv).name} ({len(lva)} crops)",
              "fitted_with": pred.setting, "target_rejection": target_rejection,
              "val_rejection": float(np.mean([bool(r) for r in val_reasons])),
              "crop_side": int(np.median([_longer_side(p) for p in train_files]))}
    save_gate(bundle, gate, **record)
    return record


def measure(bundle: Bundle | str | Path, data_root, splits_csv, *, n_ood: int = 40, seed: int = 0,
            fields: str | Path | None = None) -> dict:
    """The bundle's stored gate, measured as the app runs it on data it never saw (see the module's docstring)."""
    t0 = time.perf_counter()
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    pred = Predictor(bundle)  # the app's: the bundle's engine, precision and TTA; input-size rule and gate on
    gate = pred.gate
    if gate is None:
        raise SystemExit(f"{bundle.name} has no gate to measure: fit one (python -m train.ood without --measure-only)")

    def verdicts(sources) -> list[str]:
        """What the app says of each image: "" (classified) or why it refused it (input-size rule or gate)."""
        return [p.error or p.reject_reason for p in pred.predict(sources)]

    def scored(lg, ft, reasons) -> dict:
        # an image refused by a rule (blank, out of focus, too large) rather than by the score ranks above every score
        hard = np.array([bool(r) and r != REASON_OOD for r in reasons])
        return {"score": np.where(hard, 1e6, gate.score(ft, lg)), "maha": gate.mahalanobis(ft), "energy": energy(lg),
                "msp": 1 - softmax(lg, 1.0).max(1)}

    files, labels = _split_files(data_root, splits_csv, "test", pred.classes)
    split_name = f"test split of {Path(splits_csv).name}"
    reasons = verdicts(files)
    lte, fte, _ = gate_inputs(pred, split_batches(pred, data_root, splits_csv, "test")[1])
    test = scored(lte, fte, reasons)
    k = sum(map(bool, reasons))
    as_run = {"split": split_name, "crops": len(files), "refused": k, "rate": k / len(files),
              "ci95": wilson_interval(k, len(files)), "setting": pred.setting, "engine": pred.engine,
              "precision": pred.precision, "tta": pred.tta, "device": str(pred.device),
              "per_class": {c: float(np.mean([bool(r) for r, y in zip(reasons, labels) if y == c]))
                            for c in pred.classes if c in labels},
              "by_reason": _counts(reasons)}

    rng = np.random.default_rng(seed)
    src = [decode_image(files[int(i)]) for i in rng.choice(len(files), min(200, len(files)), replace=False)]
    kinds, all_out = {}, {key: [] for key in test}
    for kind, images in ood_corpus(src, n=n_ood, seed=seed).items():
        why = verdicts(images)
        r = scored(*gate_inputs(pred, _to_batches(pred, images))[:2], why)
        for key in all_out:
            all_out[key].append(r[key])
        kinds[kind] = {"n": len(images), "refused": float(np.mean([bool(w) for w in why])),
                       "auroc_vs_test": _auroc(test["score"], r["score"]), "reasons": _counts(why)}
    out_cat = {key: np.concatenate(v) for key, v in all_out.items()}
    auroc = {"gate": _auroc(test["score"], out_cat["score"]), "mahalanobis_only": _auroc(test["maha"], out_cat["maha"]),
             "energy_only": _auroc(test["energy"], out_cat["energy"]),
             "max_softmax_baseline": _auroc(test["msp"], out_cat["msp"])}

    mosaics = {}
    for name, (cols, rows, size) in MOSAICS.items():
        images = [field_mosaic([src[int(i)] for i in rng.integers(0, len(src), cols * rows)], cols, rows, size)
                  for _ in range(max(1, n_ood // 4))]
        why = verdicts(images)
        mosaics[name] = {"n": len(images), "refused": float(np.mean([bool(w) for w in why])), "reasons": _counts(why)}
        del images
    size_rule = {"rule": f"refused when the longer side is over {MAX_CROP_SCALE} x the training crops' side",
                 "crop_side": bundle.crop_side, "max_side": round(MAX_CROP_SCALE * bundle.crop_side),
                 "test_refused": sum(REASON_FIELD in r for r in reasons), "test_crops": len(files), "mosaics": mosaics}

    fields = Path(fields) if fields else Path(data_root).parent / "fields" / "bccd"
    blood = None
    if (fields / "Annotations").is_dir():
        cells = bccd_white_cells(fields, bundle.crop_side)
        preds = pred.predict([c for _, c in cells], [n for n, _ in cells])
        why = [p.error or p.reject_reason for p in preds]
        passed = [p for p, w in zip(preds, why) if not w]
        confident = [p for p in passed if not p.uncertain]
        lg, ft, _ = gate_inputs(pred, _to_batches(pred, [c for _, c in cells]))
        blood = {"data": f"every white cell boxed in {len({n.split('#')[0] for n, _ in cells})} real peripheral-blood "
                         f"smear fields ({fields.name}: BCCD, Giemsa/Wright, 640x480)", "fields": str(fields),
                 "crops": len(cells), "crop": f"square around each box, 1.6x its longer side, resized to "
                                              f"{bundle.crop_side} px",
                 "passed": len(passed), "passed_confident": len(confident),
                 "confident": f"calibrated confidence >= {pred.rules.uncertain_below:.2f} (the bundle's review rule)",
                 "passed_not_sent_to_review": sum(not p.needs_review for p in passed),
                 "confident_labels": _counts([p.code for p in confident]), "refused": _counts(why),
                 "auroc_vs_test": _auroc(test["score"], scored(lg, ft, why)["score"])}

    n_out = sum(v["n"] for v in kinds.values())
    return {"bundle": bundle.name, "weights_sha256": bundle.sha256,
            **{key: v for key, v in (bundle.meta.get("ood") or {}).items() if key in FIT_KEYS},
            "test_rejection": as_run["rate"], "test_as_run": as_run,
            "test_split": f"{split_name} ({len(files)} crops): never used for fitting or calibration",
            "ood_images": n_out, "ood_refused": sum(v["refused"] * v["n"] for v in kinds.values()) / max(1, n_out),
            "auroc": auroc, "by_kind": kinds, "input_size_rule": size_rule, "peripheral_blood": blood,
            "tta": pred.tta, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
            "command": f"python -m train.ood --bundle {bundle.path} --splits {splits_csv} --data-root {data_root} "
                       f"--fields {fields} --measure-only"}


def fit_and_measure(bundle: Bundle | str | Path, data_root, splits_csv, *, n_ood: int = 40, seed: int = 0,
                    target_rejection: float = 0.04, fields: str | Path | None = None, refit: bool = True) -> dict:
    """Fit the gate (unless ``refit`` is False: the bundle's own is kept), measure it, write ``eval_ood.json``."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if refit:
        fit(bundle, data_root, splits_csv, target_rejection=target_rejection)
    report = measure(bundle, data_root, splits_csv, n_ood=n_ood, seed=seed, fields=fields)
    (bundle.path / "eval_ood.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv=None) -> int:
    ap = bundle_parser("python -m train.ood", __doc__)
    ap.add_argument("--n-ood", type=int, default=40, help="images per out-of-distribution kind")
    ap.add_argument("--target-rejection", type=float, default=0.04)
    ap.add_argument("--fields", default=None, help="Pascal VOC smear fields with boxed white cells (BCCD); default "
                                                   "<data-root>/../fields/bccd when present")
    ap.add_argument("--measure-only", action="store_true", help="keep the bundle's fitted gate; rewrite eval_ood.json")
    a = ap.parse_args(argv)
    r = fit_and_measure(a.bundle, a.data_root, a.splits, n_ood=a.n_ood, target_rejection=a.target_rejection,
                        fields=a.fields, refit=not a.measure_only)
    t = r["test_as_run"]
    print(f"as the app runs it ({t['setting']}): refuses {t['refused']} of {t['crops']} crops of the {t['split']} "
          f"({t['rate']:.1%}, 95% CI {t['ci95'][0]:.1%}-{t['ci95'][1]:.1%}); val at calibration "
          f"{r.get('val_rejection', float('nan')):.3f}; {r['ood_refused']:.3f} of {r['ood_images']} "
          "out-of-distribution images")
    print("AUROC vs test: " + ", ".join(f"{k} {v:.3f}" for k, v in r["auroc"].items()))
    for kind, v in {**r["by_kind"], **r["input_size_rule"]["mosaics"]}.items():
        print(f"  {kind:40s} n={v['n']:3d} refused {v['refused']:.2f} {v['reasons']}")
    s = r["input_size_rule"]
    print(f"input-size rule (at most {s['max_side']} px a side): {s['test_refused']} of {s['test_crops']} test crops "
          "refused")
    if b := r["peripheral_blood"]:
        print(f"peripheral blood: {b['passed']} of {b['crops']} white-cell crops pass the gate, {b['passed_confident']} "
              f"with a confident label ({b['confident']}), {b['passed_not_sent_to_review']} not sent to review")
    print(f"{r['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
