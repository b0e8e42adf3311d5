"""Smear-field images: find the nucleated (white) cells in a camera field, so that each can be cropped and classified.

A photograph of a microscope field shows many cells: red cells (pink, no nucleus), platelets (small blue specks)
and a few nucleated cells whose nuclei take the blue-violet of the Romanowsky stains (May-Grünwald-Giemsa,
Wright, Giemsa). The finder works on that stain contrast:

1. **Scale.** Every length below is in micrometres and turned into pixels with the field's scale: given by the
   user (µm per pixel) or estimated from the red cells, whose diameter is about ``RBC_DIAMETER_UM`` (7.5 µm):
   red-cell pixels (red over green, Otsu), holes (the central pallor) filled, and the distance transform's local
   maxima, the radii of the cells' inscribed circles, taken at their upper quartile (overlapping red cells give
   smaller circles, never larger ones) and turned into the cells' span by ``RBC_SPAN_PER_CIRCLE`` (a red cell is
   not a perfect disc; fitted on the tuning half of the BCCD fields against their red-cell boxes).
   ``FieldScale.source`` says which was used.
2. **Nuclei, read several ways** (``nucleus_candidates``). The nuclear stain channel is blue minus red
   (``nuclear_channel``): high in nuclei, near zero in red cells and background, moderate in cytoplasm. It is
   thresholded at each of ``CANDIDATE_LEVELS``, opened to drop specks, closed over ``LOBE_GAP_UM``, holes filled;
   blobs under ``MIN_NUCLEUS_AREA_UM2`` are dropped (a platelet is 2-3 µm across). The lobes of a segmented or
   two-lobed nucleus are grouped at each of ``CANDIDATE_GROUPS_UM`` while the group stays under
   ``MAX_NUCLEUS_UM``, and a blob too large for one nucleus (``SPLIT_AREA_UM2``) is read both whole and split by a
   watershed on its distance transform, seeded at maxima ``SPLIT_MIN_DIST_UM`` apart. One fixed reading cannot
   serve both an eosinophil whose two lobes lie apart and two lymphocytes that touch; the readings are all kept.
3. **Which readings are cells, and their boxes** (``FieldScorer``). For each reading, ``candidate_features``
   measures its size and shape in µm, its stain, the colour of a cytoplasm-wide rim around it, its distance to
   the border, how it was read, how it nests among the other readings and how far the fainter stain of its
   cytoplasm reaches on each side (``cytoplasm_extents``). Gradient-boosted trees fitted on the tuning half of the
   annotated BCCD fields (``python -m train.fields_scorer``; ``assets/fields/scorer.json``) give the cell box
   (a granulocyte's cytoplasm reaches further than a lymphocyte's) and the probability that the reading is one
   white cell; the best readings are kept, none overlapping a kept one and none whose nucleus centre lies within
   a kept cell's box (a white cell holds one nucleus: such a reading is another reading of that cell, a lobe of
   it, or a platelet on it). The classifier also learned from the annotated platelets of those fields, read down
   to ``PLATELET_MIN_AREA_UM2`` (``train.fields_scorer``): a clump of platelets is the blob most often taken for a
   small nucleus.
   A cell whose box reaches past the image border, or whose nucleus touches it, is marked ``border``: it is cut,
   and is not classified as a whole cell.

``crop_cell`` cuts a square around a found cell, centred on its nucleus, so that the nucleus fills the same
fraction of the crop as the nuclei of the training crops fill theirs (``TRAIN_NUCLEUS_FRACTION``: the median
over bm-dev, measured with this same finder by ``python bench/fields.py --train-ratio``), and resizes it to the
training crop side. The crop's size therefore follows each cell's own nucleus; the field's scale (the user's or
the red cells') sets the finder's lengths (lobe gaps, the smallest nucleus, the largest) in pixels.

``expand_fields`` turns the field images of a batch into one item per whole cell (a field is an image too large
to be one cell crop by ``bmcore.ood.size_refusal`` in which the finder sees at least one nucleated cell); a cell
cut by the image border becomes a named, refused item; each cell item carries its source field and box.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import IMPORT_LOCK

RBC_DIAMETER_UM = 7.5          # a normal red cell's diameter
RBC_SPAN_PER_CIRCLE = 1.19     # a red cell's span (as boxed) / its inscribed circle's diameter (fitted: tune half)
DEFAULT_UM_PER_PX = 0.08       # only if neither the user nor the red cells give a scale (100x oil, 640 px camera)
NUCLEUS_LEVEL = 45.0           # blue minus red (0-255) above which a pixel is nuclear stain
LOBE_GAP_UM = 1.2              # nuclear stain closer than this is one blob
MAX_NUCLEUS_UM = 16.0          # lobes are grouped only while the group is no wider than any nucleus
MIN_NUCLEUS_AREA_UM2 = 8.0     # smaller blobs are platelets or debris
PLATELET_MIN_AREA_UM2 = 2.0    # the scorer's platelet negatives are read down to this (one platelet: 2-3 µm across)
SPLIT_AREA_UM2 = 160.0         # a blob larger than this may be several touching nuclei
SPLIT_MIN_DIST_UM = 5.0        # watershed seeds at least this far apart
TRAIN_NUCLEUS_FRACTION = 0.58  # nucleus side / crop side in the training crops (bench/fields.py --train-ratio)
CANDIDATE_LEVELS = (35.0, 45.0, 60.0)          # stain thresholds the nucleus candidates are read at
CANDIDATE_GROUPS_UM = (0.0, 2.5, 4.0, 6.0)      # lobe-grouping distances they are read at
WORK_SIDE = 1280               # a larger field is searched at this longer side (boxes mapped back to its pixels)
CYTOPLASM_LEVELS = (10.0, 20.0)  # lower stain levels a cell's cytoplasm reaches (the box regressors' extent features)
EXTENT_WINDOW = 0.75           # ... measured up to this many nucleus sides beyond the nucleus box (chosen: docs/smear-fields.md)


@dataclass
class FieldScale:
    um_per_px: float
    source: str                      # "user", "red cells" or "default (no red cells found)"
    rbc_diameter_px: float | None = None

    def describe(self) -> str:
        s = f"{self.um_per_px:.4f} µm/px ({self.source}"
        if self.rbc_diameter_px and self.source == "red cells":
            s += f", {self.rbc_diameter_px:.0f} px across = {RBC_DIAMETER_UM} µm"
        return s + ")"


def scale_words(source: str) -> str:
    """How a field's scale was got (``FieldScale.source``), in words for a reader."""
    return {"user": "typed in", "red cells": "estimated from the red cells"}.get(
        source, "a default: no red cells were found")


@dataclass
class FoundCell:
    box: tuple[int, int, int, int]          # x0, y0, x1, y1 (exclusive) of the cell, clipped to the image
    nucleus_box: tuple[int, int, int, int]
    nucleus_area_px: int
    border: bool                            # the cell is cut by the image border
    score: float | None = None              # the scorer's probability that this is one white cell

    @property
    def side(self) -> int:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FieldResult:
    cells: list[FoundCell]
    scale: FieldScale
    size: tuple[int, int]                   # w, h
    notes: list[str] = field(default_factory=list)

    @property
    def whole(self) -> list[FoundCell]:
        return [c for c in self.cells if not c.border]


def as_rgb_array(img) -> np.ndarray:
    """HxWx3 uint8 RGB from a PIL image or an array."""
    if hasattr(img, "mode"):
        img = np.asarray(img.convert("RGB"))
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError("a field image must be RGB")
    return np.ascontiguousarray(a, dtype=np.uint8)


def nuclear_channel(rgb: np.ndarray) -> np.ndarray:
    """Blue minus red, float32: the stain of nuclei (blue-violet) against red cells and background."""
    f = cv2.GaussianBlur(rgb, (5, 5), 0).astype(np.float32)
    return f[..., 2] - f[..., 0]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(mask)


def estimate_rbc_diameter(rgb: np.ndarray) -> float | None:
    """The red cells' diameter in px (None when too few red cells are seen): see the module's docstring."""
    from skimage.feature import peak_local_max

    f = cv2.GaussianBlur(rgb, (5, 5), 0).astype(np.float32)
    redness = np.clip(f[..., 0] - f[..., 1] + 64, 0, 255).astype(np.uint8)
    level, _ = cv2.threshold(redness, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (redness > level) & (nuclear_channel(rgb) < NUCLEUS_LEVEL)
    mask = _fill_holes(cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8)) > 0)
    dt = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    side = min(rgb.shape[:2])
    peaks = peak_local_max(dt, min_distance=max(3, side // 40), threshold_abs=max(3.0, side / 160), exclude_border=True)
    if len(peaks) < 3:
        return None
    radii = dt[peaks[:, 0], peaks[:, 1]]
    return float(RBC_SPAN_PER_CIRCLE * 2 * np.percentile(radii, 75))


def field_scale(rgb: np.ndarray, um_per_px: float | None = None) -> FieldScale:
    """The field's scale: the user's (``um_per_px``), else from the red cells, else a stated default."""
    if um_per_px:
        if not 0.005 <= um_per_px <= 5:
            raise ValueError(f"scale {um_per_px} µm/px is not a microscope field's (0.005 to 5 µm/px)")
        return FieldScale(float(um_per_px), "user")
    d = estimate_rbc_diameter(rgb)
    if d is None:
        return FieldScale(DEFAULT_UM_PER_PX, "default (no red cells found)")
    return FieldScale(RBC_DIAMETER_UM / d, "red cells", d)


def _split(blob: np.ndarray, min_dist_px: int) -> list[np.ndarray]:
    """Touching nuclei in one blob: watershed of its distance transform from well-separated maxima."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    dt = cv2.distanceTransform(blob.astype(np.uint8), cv2.DIST_L2, 5)
    peaks = peak_local_max(dt, min_distance=max(1, min_dist_px), threshold_rel=0.5, exclude_border=False)
    if len(peaks) < 2:
        return [blob]
    markers = np.zeros(blob.shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
    lab = watershed(-dt, markers, mask=blob)
    return [lab == i for i in range(1, len(peaks) + 1) if (lab == i).any()]


def find_cells(img, um_per_px: float | None = None) -> FieldResult:
    """The nucleated cells of a field image (PIL image or RGB array), as boxes in its pixels; see the module's
    docstring. A field over ``WORK_SIDE`` px (a 12-megapixel camera photo) is searched reduced to that side: a cell
    spans tens of pixels there, and the time stays that of a small field."""
    rgb = as_rgb_array(img)
    h, w = rgb.shape[:2]
    f = WORK_SIDE / max(h, w)
    if f >= 1:
        return _find_cells(rgb, um_per_px)
    if um_per_px:
        field_scale(rgb[:1, :1], um_per_px)  # the user's scale checked as given
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    fx, fy = w / small.shape[1], h / small.shape[0]
    res = _find_cells(small, um_per_px * fx if um_per_px else None)

    def up(b):
        return (min(w, round(b[0] * fx)), min(h, round(b[1] * fy)), min(w, round(b[2] * fx)), min(h, round(b[3] * fy)))

    cells = [FoundCell(up(c.box), up(c.nucleus_box), round(c.nucleus_area_px * fx * fy), c.border, c.score)
             for c in res.cells]
    sc = res.scale
    scale = FieldScale(um_per_px or sc.um_per_px / fx, sc.source, sc.rbc_diameter_px * fx if sc.rbc_diameter_px else None)
    return FieldResult(cells, scale, (w, h), res.notes + [f"searched at {small.shape[1]}x{small.shape[0]} px"])


def _find_cells(rgb: np.ndarray, um_per_px: float | None) -> FieldResult:
    h, w = rgb.shape[:2]
    scale = field_scale(rgb, um_per_px)
    px = 1.0 / scale.um_per_px  # pixels per µm
    chan = nuclear_channel(rgb)
    cands = nucleus_candidates(rgb, px, chan)
    scorer = field_scorer()
    cells = scorer.select(cands, candidate_features(rgb, cands, px, chan), w, h) if cands else []
    cells.sort(key=lambda c: (c.box[1] // max(1, h // 4), c.box[0]))
    return FieldResult(cells, scale, (w, h))


@dataclass
class Candidate:
    """One hypothesis of a nucleus: a blob of nuclear stain at one threshold, lobes grouped at one distance."""
    nucleus_box: tuple[int, int, int, int]
    area: int
    mask: np.ndarray                       # bool, the nucleus_box's window
    level: float
    group_um: float
    split: bool
    lobes: int


def _nucleus_mask(chan: np.ndarray, level: float, px: float) -> np.ndarray:
    """Nuclear stain above ``level``, specks opened away, gaps under ``LOBE_GAP_UM`` closed, holes filled."""
    mask = (chan > level).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    k = max(3, int(round(LOBE_GAP_UM * px)) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return _fill_holes(mask > 0).astype(np.uint8)


def nucleus_candidates(rgb: np.ndarray, px: float, chan: np.ndarray | None = None,
                       min_area_um2: float = MIN_NUCLEUS_AREA_UM2) -> list[Candidate]:
    """Every plausible nucleus in a field, under several readings: stain thresholds ``CANDIDATE_LEVELS``, lobes
    grouped within each of ``CANDIDATE_GROUPS_UM`` (0: every blob alone) while the group stays under
    ``MAX_NUCLEUS_UM``, and blobs too large for one nucleus both whole and split by watershed. Near-duplicates are
    dropped. ``FieldScorer.select`` then keeps the readings that look like one white cell each. A smaller
    ``min_area_um2`` than the finder's is for training only (``train.fields_scorer``: platelet readings)."""
    chan = nuclear_channel(rgb) if chan is None else chan
    min_area = min_area_um2 * px * px
    max_span = MAX_NUCLEUS_UM * px
    out: list[Candidate] = []
    seen: list[tuple[int, int, int, int]] = []

    def add(nb, sub, level, gu, split, lobes):
        area = int(sub.sum())
        if area < min_area:
            return
        for s in seen:
            if iou(nb, s) > 0.9:
                return
        seen.append(nb)
        out.append(Candidate(nb, area, sub, level, gu, split, lobes))

    for level in CANDIDATE_LEVELS:
        mask = _nucleus_mask(chan, level, px)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = np.zeros(n, bool)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area / 4
        mask = keep[lab].astype(np.uint8)
        for gu in CANDIDATE_GROUPS_UM:
            if gu > 0:
                g = max(3, int(round(gu * px)) | 1)
                ng, glab = cv2.connectedComponents(cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (g, g))))
                groups = np.where(mask > 0, glab, 0)
            else:
                ng, groups = n, np.where(mask > 0, lab, 0)
            gstats = _label_boxes(groups, ng)
            for j, (x0, y0, x1, y1) in gstats.items():
                if gu > 0 and max(x1 - x0, y1 - y0) > max_span:
                    continue  # wider than any nucleus: its blobs are read alone (gu = 0)
                sub = groups[y0:y1, x0:x1] == j
                lobes = len(np.unique(lab[y0:y1, x0:x1][sub]))
                add((x0, y0, x1, y1), sub, level, gu, False, lobes)
                if sub.sum() > SPLIT_AREA_UM2 * px * px:
                    parts = _split(sub, int(SPLIT_MIN_DIST_UM * px))
                    if len(parts) > 1:
                        for part in parts:
                            bx0, by0, bx1, by1 = _bbox(part)
                            add((x0 + bx0, y0 + by0, x0 + bx1, y0 + by1), part[by0:by1, bx0:bx1], level, gu, True, 1)
    return out


def _label_boxes(lab: np.ndarray, n: int) -> dict[int, tuple[int, int, int, int]]:
    """{label: (x0, y0, x1, y1)} of a label image's non-empty labels 1..n-1, in one pass."""
    from scipy.ndimage import find_objects

    out = {}
    for j, sl in enumerate(find_objects(lab, max_label=n - 1), 1):
        if sl is not None:
            out[j] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return out


FEATURE_NAMES = ["nucleus_area_um2", "nucleus_w_um", "nucleus_h_um", "elongation", "fill", "lobes",
                 "stain_mean", "stain_p90", "stain_sd", "rim_stain", "rim_r", "rim_g", "rim_b", "nuc_r", "nuc_g",
                 "nuc_b", "rim_pale", "border_um", "level", "group_um", "split", "inside_others", "contains_others"]
# the box regressors also read where the cytoplasm ends; the classifier (one white cell or not) does without: with
# 360 readings to learn from, the extents helped the boxes and only added noise to the classifier (docs/smear-fields.md). The
# classifier's features are the first len(CLASSIFIER_FEATURES) columns of a FEATURE_NAMES row (FieldScorer.scores)
CLASSIFIER_FEATURES = list(FEATURE_NAMES)
FEATURE_NAMES += [f"extent_{side}_{level:g}" for level in CYTOPLASM_LEVELS
                  for side in ("left", "top", "right", "bottom", "area")]


def candidate_features(rgb: np.ndarray, cands: list[Candidate], px: float, chan: np.ndarray | None = None) -> np.ndarray:
    """One row of ``FEATURE_NAMES`` per candidate: its size and shape in µm, its stain, the colour of a rim as wide
    as a cell's cytoplasm around it, its distance to the border, how it was read, and how it nests among the
    other readings, and how far the fainter stain of its cytoplasm reaches (``cytoplasm_extents``). Lengths are in
    µm (or nucleus sides) so that the scorer does not depend on the camera's pixels."""
    h, w = rgb.shape[:2]
    chan = nuclear_channel(rgb) if chan is None else chan
    extents = cytoplasm_extents(cands, chan)
    f = rgb.astype(np.float32)
    boxes = np.array([c.nucleus_box for c in cands], np.float32)
    rows = []
    for i, c in enumerate(cands):
        x0, y0, x1, y1 = c.nucleus_box
        bw, bh = x1 - x0, y1 - y0
        vals = chan[y0:y1, x0:x1][c.mask]
        nuc = f[y0:y1, x0:x1][c.mask].mean(0)
        m = int(round(0.35 * max(bw, bh)))
        rx0, ry0, rx1, ry1 = max(0, x0 - m), max(0, y0 - m), min(w, x1 + m), min(h, y1 + m)
        rim = np.ones((ry1 - ry0, rx1 - rx0), bool)
        rim[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] &= ~c.mask
        rs, rc = chan[ry0:ry1, rx0:rx1][rim], f[ry0:ry1, rx0:rx1][rim]
        pale = float((rc.mean(1) > 200).mean()) if len(rc) else 0.0
        rcm = rc.mean(0) if len(rc) else np.zeros(3)
        ix = np.clip(np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0), 0, None)
        iy = np.clip(np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0), 0, None)
        inter = ix * iy
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        inside_others = int(((inter >= 0.9 * bw * bh) & (areas > bw * bh * 1.2)).sum())
        contains_others = int(((inter >= 0.9 * areas) & (areas * 1.2 < bw * bh)).sum())
        rows.append([c.area / px / px, bw / px, bh / px, max(bw, bh) / max(1, min(bw, bh)), c.area / max(1, bw * bh),
                     c.lobes, float(vals.mean()), float(np.percentile(vals, 90)), float(vals.std()),
                     float(rs.mean()) if len(rs) else 0.0, *rcm, *nuc, pale,
                     min(x0, y0, w - x1, h - y1) / px, c.level, c.group_um, float(c.split), inside_others,
                     contains_others, *extents[i]])
    return np.asarray(rows, np.float32)


def cytoplasm_extents(cands: list[Candidate], chan: np.ndarray) -> np.ndarray:
    """Per candidate and per ``CYTOPLASM_LEVELS`` level: how far the stain above that (cytoplasm-low) level,
    connected to the nucleus, reaches beyond the nucleus box to the left, top, right and bottom, in nucleus sides
    and capped at ``EXTENT_WINDOW``, and its area over the nucleus's. The nucleus box alone gives the cell box only
    on average (a granulocyte's cytoplasm reaches further than a lymphocyte's); this is the image's own evidence
    of where this cell ends. Measured only within the window, so that the red cells it touches leak in little."""
    h, w = chan.shape
    masks = [cv2.morphologyEx((chan > level).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
             for level in CYTOPLASM_LEVELS]
    out = np.zeros((len(cands), 5 * len(CYTOPLASM_LEVELS)), np.float32)
    for i, c in enumerate(cands):
        x0, y0, x1, y1 = c.nucleus_box
        s = max(x1 - x0, y1 - y0)
        m = int(round(EXTENT_WINDOW * s))
        wx0, wy0, wx1, wy1 = max(0, x0 - m), max(0, y0 - m), min(w, x1 + m), min(h, y1 + m)
        seed = np.zeros((wy1 - wy0, wx1 - wx0), np.uint8)
        seed[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0] = c.mask
        for k, mask in enumerate(masks):
            _, lab = cv2.connectedComponents(np.maximum(mask[wy0:wy1, wx0:wx1], seed))
            ids = np.unique(lab[seed > 0])
            comp = np.isin(lab, ids[ids > 0])
            ex0, ey0, ex1, ey1 = _bbox(comp)
            out[i, 5 * k:5 * k + 5] = ((x0 - wx0 - ex0) / s, (y0 - wy0 - ey0) / s, (wx0 + ex1 - x1) / s,
                                       (wy0 + ey1 - y1) / s, comp.sum() / max(1, c.area))
    return out


def _bbox(m: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(m)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


SCORER_PATH = Path(__file__).resolve().parent.parent / "assets" / "fields" / "scorer.joblib"


@dataclass
class FieldScorer:
    """Which nucleus readings are white cells, and each one's cell box: fitted by ``python -m train.fields_scorer``
    on the tuning half of the annotated BCCD fields (``assets/fields/scorer.json`` says what and how).

    ``classifier`` gives P(the reading's cell box matches one annotated white cell at IoU >= 0.5) from the
    ``CLASSIFIER_FEATURES``; ``box`` (four regressors) gives the cell box from the nucleus box and all
    ``FEATURE_NAMES`` (the cytoplasm's extents included): centre offsets and log sides, in nucleus sides."""
    classifier: object
    box: list
    threshold: float
    nms_iou: float = 0.3

    def cell_boxes(self, cands: list[Candidate], X: np.ndarray) -> np.ndarray:
        """Unclipped cell boxes (x0, y0, x1, y1), float, one per candidate."""
        with _one_thread():
            d = np.stack([r.predict(X) for r in self.box], 1)
        nb = np.array([c.nucleus_box for c in cands], np.float64)
        s = np.maximum(nb[:, 2] - nb[:, 0], nb[:, 3] - nb[:, 1])
        cx = (nb[:, 0] + nb[:, 2]) / 2 + d[:, 0] * s
        cy = (nb[:, 1] + nb[:, 3]) / 2 + d[:, 1] * s
        bw, bh = np.exp(d[:, 2]) * s, np.exp(d[:, 3]) * s
        return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)

    def scores(self, X: np.ndarray) -> np.ndarray:
        with _one_thread():
            return self.classifier.predict_proba(X[:, :len(CLASSIFIER_FEATURES)])[:, 1]

    def select(self, cands: list[Candidate], X: np.ndarray, w: int, h: int,
               scores: np.ndarray | None = None, boxes: np.ndarray | None = None) -> list[FoundCell]:
        """The readings kept: best first, at or over ``threshold``, none overlapping a kept one by more than
        ``nms_iou`` (cell boxes), none whose nucleus lies mostly within a kept one's (or holds one), and none whose
        nucleus centre lies within a kept cell's box: a white cell holds one nucleus, so such a reading is a
        second reading of that cell (a lobe read alone, with a box of its own that overlaps the first too little
        for ``nms_iou``) or a platelet lying on it. A cell is ``border`` (cut) if its box reaches past the image or
        its nucleus touches the image's edge.

        Scores equal to three decimals are ties, broken by the order the readings were made (lowest stain level
        first, then the closest lobe grouping): several readings of one clear cell all score ~1.0, and float noise
        must not pick among them (the same field photographed larger kept another reading of the same cell)."""
        p = self.scores(X) if scores is None else scores
        bx = self.cell_boxes(cands, X) if boxes is None else boxes
        kept: list[int] = []
        for i in np.lexsort((np.arange(len(p)), -np.round(p, 3))):
            if p[i] < self.threshold:
                continue  # (not break: a tie's later members may still reach the threshold)
            nb = cands[i].nucleus_box
            if any(iou(bx[i], bx[k]) > self.nms_iou or _nested(nb, cands[k].nucleus_box) or centre_in(nb, bx[k])
                   for k in kept):
                continue
            kept.append(int(i))
        out = []
        for i in kept:
            x0, y0, x1, y1 = bx[i]
            nb = cands[i].nucleus_box
            border = x0 < 0 or y0 < 0 or x1 > w or y1 > h or nb[0] <= 0 or nb[1] <= 0 or nb[2] >= w or nb[3] >= h
            box = (max(0, int(round(x0))), max(0, int(round(y0))), min(w, int(round(x1))), min(h, int(round(y1))))
            out.append(FoundCell(box, tuple(int(v) for v in cands[i].nucleus_box), cands[i].area, bool(border),
                                 float(p[i])))
        return out


def centre_in(box, outer) -> bool:
    """Does ``box``'s centre lie within ``outer`` (both x0, y0, x1, y1)?"""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


def _one_thread():
    """scikit-learn's trees predict a few rows: one OpenMP thread. Two threads spin-wait against any busy core
    (a classification job, a second user) and took 3-13 s for a field instead of milliseconds."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def _nested(a, b, frac: float = 0.6) -> bool:
    """Does one box lie mostly (``frac`` of its area) within the other?"""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return small > 0 and ix * iy >= frac * small


_SCORER: FieldScorer | None = None


def field_scorer() -> FieldScorer:
    """The shipped scorer, loaded once per process after its sha256 is checked against ``scorer.json``."""
    global _SCORER
    if _SCORER is None:
        import hashlib
        import io
        import json

        import joblib

        meta = json.loads(SCORER_PATH.with_suffix(".json").read_text())
        blob = SCORER_PATH.read_bytes()  # read once: the bytes checked are the bytes loaded
        digest = hashlib.sha256(blob).hexdigest()
        if digest != meta["sha256"]:
            raise RuntimeError(f"{SCORER_PATH}: sha256 {digest[:12]} is not the one scorer.json records "
                               f"({meta['sha256'][:12]}); refit it with python -m train.fields_scorer")
        if meta.get("features") != FEATURE_NAMES or meta.get("classifier_features") != CLASSIFIER_FEATURES:
            raise RuntimeError(f"{SCORER_PATH} was fitted on other features than this finder measures; refit it with "
                               "python -m train.fields_scorer")
        with IMPORT_LOCK:  # unpickling imports scikit-learn (see bmcore.IMPORT_LOCK)
            d = joblib.load(io.BytesIO(blob))
        _SCORER = FieldScorer(d["classifier"], d["box"], float(d["threshold"]), float(d["nms_iou"]))
    return _SCORER


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# -- cutting cells out of fields ---------------------------------------------------------------------------------
def crop_cell(img, cell: FoundCell, crop_side: int = 250):
    """A ``crop_side`` square RGB PIL image of ``cell``, the nucleus filling ``TRAIN_NUCLEUS_FRACTION`` of it as in
    the training crops; beyond the image border the field is mirrored."""
    from PIL import Image

    rgb = as_rgb_array(img)
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = cell.nucleus_box
    side = max(8, int(round(max(x1 - x0, y1 - y0) / TRAIN_NUCLEUS_FRACTION)))
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    left, top = cx - side // 2, cy - side // 2
    pad = max(0, -left, -top, left + side - w, top + side - h)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REFLECT_101) if pad < min(h, w) else \
            cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        left, top = left + pad, top + pad
    sq = rgb[top:top + side, left:left + side]
    interp = cv2.INTER_AREA if side > crop_side else cv2.INTER_LINEAR
    return Image.fromarray(cv2.resize(sq, (crop_side, crop_side), interpolation=interp))


def _image_size(source) -> tuple[int, int] | None:
    """(w, h) from the image header, None when it cannot be read (the predictor will say why)."""
    import io

    from PIL import Image

    try:
        with Image.open(source if not isinstance(source, (bytes, bytearray)) else io.BytesIO(source)) as im:
            return im.size
    except Exception:  # noqa: BLE001 -- any unreadable header: the predictor decodes it and says why
        return None


def expand_fields(items: list, crop_side: int = 250, um_per_px: float | None = None):
    """Replace each field image among ``items`` (``bmcore.inputs.InputItem``) by its cells; return (items, fields).

    ``fields``: per field image found, ``{"name", "size", "scale", "cells": [FoundCell...], "rgb"}`` (rgb: the
    decoded field, for drawing). Items that are not fields pass unchanged; a field-sized image with no nucleated
    cell stays as it was (the size rule refuses it with its reason). Cell items are PNG bytes named
    ``<field> #<n>`` (n: the cell's number on the field, border-cut cells included) with ``origin`` set."""
    import io

    from .inputs import InputItem
    from .ood import size_refusal
    from .preprocess import ImageDecodeError, decode_image

    out, found = [], []
    for it in items:
        size = _image_size(it.source) if it.ok else None
        if size is None or not size_refusal(size, crop_side):
            out.append(it)
            continue
        try:
            img = decode_image(it.source)
        except ImageDecodeError:
            out.append(it)
            continue
        rgb = as_rgb_array(img)
        res = find_cells(rgb, um_per_px)
        if not res.cells:
            out.append(it)
            continue
        found.append({"name": it.name, "size": res.size, "scale": res.scale, "cells": res.cells, "rgb": rgb})
        for k, cell in enumerate(res.cells, 1):
            origin = {"field": it.name, "box": list(cell.box), "cell_number": k, "um_per_px": res.scale.um_per_px,
                      "scale_source": res.scale.source}
            name = f"{it.name} #{k}"
            if cell.border:
                out.append(InputItem(name, error=f"cell cut by the field's border at {cell.box}: not classified as a "
                                                 "whole cell", origin=origin))
                continue
            buf = io.BytesIO()
            crop_cell(rgb, cell, crop_side).save(buf, format="PNG")
            out.append(InputItem(name, buf.getvalue(), origin=origin))
    return out, found


# -- what a case keeps of a field (drawn by bmcore.fielddraw) ---------------------------------------------------
FIELD_IMAGE_SIDE = 1280  # longest side of the field image a case keeps for drawing its boxes
def field_record(field: dict) -> dict:
    """What a case stores of a field found by ``expand_fields``: name, original size, a JPEG at most
    ``FIELD_IMAGE_SIDE`` px a side, and its scale (``bmcore.cases.CaseStore.create_case(field_images=...)``)."""
    rgb = field["rgb"]
    h, w = rgb.shape[:2]
    f = min(1.0, FIELD_IMAGE_SIDE / max(w, h))
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) if f < 1 \
        else rgb
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise ValueError(f"could not encode field {field['name']!r}")
    sc = field["scale"]
    return {"name": field["name"], "width": w, "height": h, "image": jpg.tobytes(),
            "scale": {"um_per_px": sc.um_per_px, "source": sc.source}}
