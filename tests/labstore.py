"""A lab's store of signed cases built from real crops, for the tests of learning from them (``tests/test_learn.py``,
``tests/test_e2e_learn.py``)."""

from __future__ import annotations

import csv
import hashlib

from bmcore import caserules
from bmcore.bundle import find_bundles, load_bundle, pick_default
from bmcore.cases import CellInput
from tests.conftest import REPO, TEST_PASSWORD, actor

BASE = pick_default(find_bundles(REPO / "assets" / "models"))
SPLITS = REPO / "train" / "splits" / "bm-dev_seed42.csv"


def val_crops(dev_root, n_per_class: int) -> list[tuple[str, bytes]]:
    """(label, bytes) of val-split crops (never trained on by the default), ``n_per_class`` per class."""
    rows, per = [], {}
    with open(SPLITS) as f:
        for r in csv.DictReader(f):
            if r["split"] == "val" and per.get(r["label"], 0) < n_per_class:
                per[r["label"]] = per.get(r["label"], 0) + 1
                rows.append((r["label"], (dev_root / r["path"]).read_bytes()))
    return rows


def signed_case(store, code, crops, *, sign=True, demo=False, refuse_last=False, by_base=False):
    """A case whose cells are the crops (the model's label = the true one), signed with those labels. ``by_base``:
    recorded as classified by the default bundle (its heatmaps can be drawn)."""
    tech, path = actor(store, "tina", "technologist"), actor(store, "drp", "pathologist")
    cells = [CellInput(f"{code}_{i}.jpg", True, sha256=hashlib.sha256(d).hexdigest(), thumbnail=d,
                       predicted=label, confidence=0.99) for i, (label, d) in enumerate(crops)]
    if refuse_last:  # an image the gate refused that nobody labelled: dismissed, so it must never be learnt
        cells[-1].rejected, cells[-1].reject_reason = True, "unlike"
    base = load_bundle(BASE)
    model = {"model_name": base.name, "model_sha256": base.sha256} if by_base else {}  # classified by the default
    cid = store.create_case(code, cells, actor=tech, model_classes=base.classes, demo=demo, **model)
    for c in store.get_case(cid).cells:
        if caserules.rejected_open(c):
            store.review_cell(c.id, tech, "DIS")
        elif c.predicted != crops[c.position][0]:
            store.review_cell(c.id, tech, crops[c.position][0])
    store.review_cells(cid, tech, {c.id: c.version for c in store.get_case(cid).cells if caserules.unresolved(c)})
    if sign:
        store.sign_off(cid, path, password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    return cid
