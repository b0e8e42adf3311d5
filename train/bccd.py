"""The annotated BCCD smear fields (``../shared/data/fields/bccd``), as training and measurement read them: the
split into the half the field finder is fitted on and the half it is only measured on, the Pascal VOC boxes, and
the matching of found boxes to annotated ones (``train.fields_scorer``, ``bench/fields.py``, the tests)."""

from __future__ import annotations

from pathlib import Path

from bmcore.fields import iou


def bccd_split(root) -> dict[str, list[str]]:
    """The annotated BCCD fields split once by sorted file name: ``tune`` (first half: the finder's constants and
    scorer are fitted there) and ``report`` (second half: measured only)."""
    stems = sorted(p.stem for p in (Path(root) / "Annotations").glob("*.xml"))
    half = len(stems) // 2
    return {"tune": stems[:half], "report": stems[half:]}


def read_voc(path) -> dict[str, list[tuple[int, int, int, int]]]:
    """Pascal VOC boxes by class name ({"WBC": [...], "RBC": [...]}); ``RBC_whole``: red cells not cut by the border."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    w = int(float(root.findtext("size/width", "0")))
    h = int(float(root.findtext("size/height", "0")))
    out: dict[str, list] = {}
    for o in root.iter("object"):
        b = o.find("bndbox")
        box = tuple(int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
        name = (o.findtext("name") or "").strip()
        out.setdefault(name, []).append(box)
        cut = o.findtext("truncated", "0").strip() == "1" or box[0] <= 1 or box[1] <= 1 or box[2] >= w - 1 \
            or box[3] >= h - 1
        if name == "RBC" and not cut and box[2] > box[0] and box[3] > box[1]:
            out.setdefault("RBC_whole", []).append(box)
    return out


def match_boxes(found, truth, threshold: float = 0.5) -> int:
    """How many ``truth`` boxes a ``found`` box matches at IoU >= ``threshold`` (greedy, best pairs first, 1:1)."""
    pairs = sorted(((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)), reverse=True)
    used_f, used_t, n = set(), set(), 0
    for v, i, j in pairs:
        if v < threshold:
            break
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
            n += 1
    return n
