"""Smear-field images: the cell finder (bmcore.fields) on synthetic and real annotated fields, crops, and the CLI."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from bmcore import fielddraw
from bmcore import fields as F
from train import bccd as voc
from bmcore.inputs import InputItem
from tests.conftest import REPO, SHARED

BCCD = SHARED / "data" / "fields" / "bccd"
# every 24th of the 292 annotated fields (both halves of bench/fields.py's split): 13 fields, 14 white cells
HANDFUL = ["BloodImage_00000", "BloodImage_00035", "BloodImage_00070", "BloodImage_00107", "BloodImage_00144",
           "BloodImage_00183", "BloodImage_00215", "BloodImage_00247", "BloodImage_00274", "BloodImage_00308",
           "BloodImage_00342", "BloodImage_00372", "BloodImage_00405"]


@pytest.fixture(scope="module")
def bccd():
    if not (BCCD / "Annotations").is_dir():
        pytest.skip(f"annotated smear fields not found at {BCCD} (../shared/data is absent on this machine)")
    return BCCD


def synthetic_field(w=640, h=480) -> np.ndarray:
    """Pale background, red cells 100 px across (so 13.3 px/µm), two whole nucleated cells and one cut by the
    right border, plus a platelet-sized speck."""
    img = np.full((h, w, 3), (222, 226, 224), np.uint8)
    for cx, cy in [(60, 60), (60, 400), (330, 420), (480, 60), (250, 60)]:
        cv2.circle(img, (cx, cy), 50, (200, 150, 150), -1)
        cv2.circle(img, (cx, cy), 15, (215, 185, 185), -1)  # central pallor
    for cx, cy in [(200, 250), (420, 240), (630, 330)]:
        cv2.circle(img, (cx, cy), 75, (205, 195, 210), -1)   # cytoplasm
        cv2.circle(img, (cx, cy), 50, (120, 80, 200), -1)    # nucleus
    cv2.circle(img, (330, 150), 6, (130, 100, 200), -1)      # platelet
    return cv2.GaussianBlur(img, (3, 3), 0)


def test_synthetic_field_cells_found_border_marked_platelet_ignored():
    res = F.find_cells(synthetic_field())
    assert res.scale.source == "red cells"
    assert abs(res.scale.um_per_px - 7.5 / 100) / 0.075 < 0.15
    assert len(res.cells) == 3
    whole = sorted(c.box for c in res.whole)
    assert len(whole) == 2
    assert voc.match_boxes(whole, [(125, 175, 275, 325), (345, 165, 495, 315)], 0.5) == 2
    cut = [c for c in res.cells if c.border]
    assert len(cut) == 1 and cut[0].box[2] == 640


def test_user_scale_is_used_and_checked():
    res = F.find_cells(synthetic_field(), um_per_px=0.075)
    assert res.scale.source == "user" and res.scale.um_per_px == 0.075
    assert len(res.whole) == 2
    with pytest.raises(ValueError, match="µm/px"):
        F.find_cells(synthetic_field(), um_per_px=50)


def test_crop_matches_training_nucleus_fraction():
    rgb = synthetic_field()
    res = F.find_cells(rgb)
    crop = F.crop_cell(rgb, res.whole[0], 250)
    assert crop.size == (250, 250)
    again = F.find_cells(np.asarray(crop), um_per_px=0.075)
    centre = min(again.cells, key=lambda c: abs((c.nucleus_box[0] + c.nucleus_box[2]) / 2 - 125))
    side = max(centre.nucleus_box[2] - centre.nucleus_box[0], centre.nucleus_box[3] - centre.nucleus_box[1])
    assert abs(side / 250 - F.TRAIN_NUCLEUS_FRACTION) < 0.05


def test_expand_fields_turns_a_field_into_cells_and_leaves_crops(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(synthetic_field()).save(buf, format="PNG")
    small = io.BytesIO()
    Image.fromarray(synthetic_field(240, 240)).save(small, format="PNG")
    items = [InputItem("field.png", buf.getvalue()), InputItem("crop.png", small.getvalue()),
             InputItem("bad.png", error="corrupt")]
    out, fields = F.expand_fields(items, 250)
    assert [f["name"] for f in fields] == ["field.png"]
    names = [it.name for it in out]
    assert names == ["field.png #1", "field.png #2", "field.png #3", "crop.png", "bad.png"]
    cells = [it for it in out if it.origin]
    assert sum(not it.ok for it in cells) == 1 and "border" in next(it.error for it in cells if not it.ok)
    for it in cells:
        assert it.origin["field"] == "field.png" and len(it.origin["box"]) == 4
        if it.ok:
            assert Image.open(io.BytesIO(it.source)).size == (250, 250)


def test_real_fields_recall_precision_and_scale(bccd):
    sys.path.insert(0, str(REPO / "bench"))
    from bench.fields import evaluate

    r = evaluate(bccd, HANDFUL)
    assert r["wbc_boxes"] == 14
    assert r["recall"] >= 0.9, r       # measured 14 / 14 (2026-11-27, Intel Xeon)
    assert r["precision"] >= 0.85, r   # measured 14 / 14
    assert r["scale"]["median_abs_rel_error"] <= 0.15, r["scale"]


def test_held_out_half_recall_precision_and_the_scorer_never_saw_it(bccd):
    """The report half of the BCCD fields, never read by train.fields_scorer: recall and precision meet the goals
    (0.97, 0.90; measured 143 / 147 and 143 / 158 on 2026-11-27 with the one-nucleus-per-cell rule and the
    platelet negatives; 0.867 precision before them). The shipped scorer says it was fitted on the tune half only,
    and its file is the one scorer.json's sha256 names."""
    import hashlib
    import json

    from bench.fields import evaluate

    meta = json.loads(F.SCORER_PATH.with_suffix(".json").read_text())
    halves = voc.bccd_split(bccd)
    assert meta["data"].endswith(f"{halves['tune'][0]} .. {halves['tune'][-1]} ({len(halves['tune'])} fields)")
    assert max(halves["tune"]) < min(halves["report"])
    assert hashlib.sha256(F.SCORER_PATH.read_bytes()).hexdigest() == meta["sha256"]
    r = evaluate(bccd, halves["report"])
    assert r["wbc_boxes"] == 147
    assert r["recall"] >= 0.97, r        # measured 143 / 147
    assert r["precision"] >= 0.90, r     # measured 143 / 158


def test_block_cross_validation_of_the_fitting_meets_both_goals(bccd):
    """The scorer's fitting procedure (train.fields_scorer.fit) over all 292 fields in 4 contiguous blocks, each
    scored by a scorer fitted on the other three: pooled recall and precision meet the goals (0.97, 0.90;
    measured 293 / 301 = 0.973 and 293 / 314 = 0.933 by bench/fields.py --block-cv 4, one thread, 2026-11-27 17:27),
    and no block falls far below them (measured 0.960 at worst). One thread, as measured: the trees are then reproducible."""
    from threadpoolctl import threadpool_limits

    from bench.fields import block_cv

    with threadpool_limits(limits=1):
        cv = block_cv(bccd, 4)
    assert cv["pooled"]["annotated"] == 301
    assert cv["pooled"]["recall"] >= 0.97, cv["pooled"]
    assert cv["pooled"]["precision"] >= 0.90, cv["pooled"]
    assert min(b["recall"] for b in cv["blocks"]) >= 0.93, cv["blocks"]


def test_cytoplasm_extents_measure_how_far_the_fainter_stain_reaches_from_the_nucleus():
    """A nucleus (stain 80) with cytoplasm (stain 15) reaching 6 px left and 20 px right of it, and a red cell's
    faint stain (15) below it beyond a gap: at level 10 the extents are the cytoplasm's (in nucleus sides), capped at
    the window, at level 20 only the nucleus; the red cell beyond the gap is not counted."""
    chan = np.zeros((120, 160), np.float32)
    chan[40:60, 54:100] = 15       # cytoplasm: x 54..99
    chan[40:60, 60:80] = 80        # nucleus: x 60..79, y 40..59 (20 px side)
    chan[64:72, 56:84] = 15        # a red cell's faint stain below, 4 px away: inside the window, not connected
    mask = np.ones((20, 20), bool)
    cand = F.Candidate((60, 40, 80, 60), 400, mask, 45.0, 0.0, False, 1)
    ex = F.cytoplasm_extents([cand], chan)[0]
    by = dict(zip([n for n in F.FEATURE_NAMES if n.startswith("extent_")], ex))
    assert F.CYTOPLASM_LEVELS == (10.0, 20.0)
    assert by["extent_left_10"] == pytest.approx(6 / 20) and by["extent_right_10"] == pytest.approx(
        min(20 / 20, F.EXTENT_WINDOW))
    assert by["extent_top_10"] == 0 and by["extent_bottom_10"] == 0
    assert by["extent_area_10"] == pytest.approx(min(46, 20 + 20 * F.EXTENT_WINDOW + 6) * 20 / 400)
    assert by["extent_left_20"] == 0 and by["extent_right_20"] == 0 and by["extent_area_20"] == 1


def _reading(box):
    x0, y0, x1, y1 = box
    return F.Candidate(box, (x1 - x0) * (y1 - y0), np.ones((y1 - y0, x1 - x0), bool), 45.0, 0.0, False, 1)


def test_one_nucleus_per_cell_a_second_reading_inside_a_kept_cell_is_dropped():
    """A white cell holds one nucleus. Reading A (score 1.0) is a cell with its box; reading B (0.9) is a lobe of
    it read alone, whose own predicted box overlaps A's too little for the box rule (IoU < nms_iou) and whose
    nucleus is not nested in A's, but whose centre lies in A's cell box: dropped. Reading C, a cell apart, is kept.
    A reading whose nucleus touches the image's edge is a cut cell even when its predicted box stays inside."""
    sc = F.FieldScorer(None, [], threshold=0.5)
    cands = [_reading((100, 100, 140, 140)), _reading((150, 150, 170, 170)), _reading((400, 300, 440, 340))]
    boxes = np.array([[80, 80, 180, 180], [150, 150, 260, 260], [380, 280, 460, 360]], float)
    assert F.iou(boxes[0], boxes[1]) < sc.nms_iou and not F._nested(cands[0].nucleus_box, cands[1].nucleus_box)
    kept = sc.select(cands, np.zeros((3, 1)), 640, 480, scores=np.array([1.0, 0.9, 0.95]), boxes=boxes)
    assert [c.nucleus_box for c in kept] == [(100, 100, 140, 140), (400, 300, 440, 340)]
    assert not any(c.border for c in kept)
    edge = sc.select([_reading((0, 200, 30, 240))], np.zeros((1, 1)), 640, 480, scores=np.array([1.0]),
                     boxes=np.array([[0.5, 190, 45, 250]]))
    assert len(edge) == 1 and edge[0].border


def test_fewer_platelet_clumps_are_taken_for_cells_on_fields_the_scorer_never_saw(bccd):
    """The classifier learned from the tune half's annotated platelets as negatives (train.fields_scorer; they are
    mostly specks under the finder's smallest nucleus, which teach it where platelets lie in its features). On the
    report half, the finder keeps 5 boxes whose nucleus centre lies on an annotated platelet and in no white cell
    (measured 2026-11-27; 8 with the scorer fitted without them), and its own readings on platelets score lower:
    of those 11 readings, 3 fall under the keep threshold (none before; median score 0.47, was 0.76), while its
    readings of the report half as a whole mostly stay over it (1.8% under)."""
    halves = voc.bccd_split(bccd)
    sc = F.field_scorer()
    kept_on_platelets, reading_scores = 0, []
    for s in halves["report"]:
        ann = voc.read_voc(bccd / "Annotations" / f"{s}.xml")
        rgb = np.asarray(Image.open(bccd / "JPEGImages" / f"{s}.jpg").convert("RGB"))

        def on_platelet(box):
            return (any(F.centre_in(box, g) for g in ann.get("Platelets", []))
                    and not any(F.centre_in(box, g) for g in ann.get("WBC", [])))

        kept_on_platelets += sum(on_platelet(c.nucleus_box) for c in F.find_cells(rgb).cells)
        px = 1.0 / F.field_scale(rgb).um_per_px
        cands = F.nucleus_candidates(rgb, px)
        if cands:
            p = sc.scores(F.candidate_features(rgb, cands, px))
            reading_scores += [float(q) for c, q in zip(cands, p) if on_platelet(c.nucleus_box)]
    assert kept_on_platelets <= 6  # measured 5; 8 before
    assert len(reading_scores) >= 8 and sum(q < sc.threshold for q in reading_scores) >= 2  # measured 11, 3; 0 before


def test_a_tampered_scorer_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "scorer.joblib"
    bad.write_bytes(F.SCORER_PATH.read_bytes() + b"x")
    (tmp_path / "scorer.json").write_text(F.SCORER_PATH.with_suffix(".json").read_text())
    monkeypatch.setattr(F, "SCORER_PATH", bad)
    monkeypatch.setattr(F, "_SCORER", None)
    with pytest.raises(RuntimeError, match="sha256"):
        F.field_scorer()


def test_real_field_border_cell_marked(bccd):
    rgb = np.asarray(Image.open(bccd / "JPEGImages" / "BloodImage_00193.jpg").convert("RGB"))
    res = F.find_cells(rgb)
    truth = voc.read_voc(bccd / "Annotations" / "BloodImage_00193.xml")["WBC"]
    cut_truth = [b for b in truth if b[3] >= 479]
    assert cut_truth, "the field's annotation has a white cell cut by the bottom border"
    cut = [c for c in res.cells if c.border]
    assert cut and all(c.box[3] == 480 for c in cut)
    assert voc.match_boxes([c.box for c in res.whole], [b for b in truth if b[3] < 479]) == 1


def test_cli_classifies_field_cells_with_source_and_box(tmp_path, tiny_bundle):
    field = tmp_path / "smear_field_1.png"
    Image.fromarray(synthetic_field()).save(field)
    out = tmp_path / "cells.csv"
    r = subprocess.run([sys.executable, "-m", "bmcore", "classify", str(field), "--bundle", str(tiny_bundle.path),
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [x["file"] for x in rows] == ["smear_field_1.png #1", "smear_field_1.png #2", "smear_field_1.png #3"]
    assert all(x["source_field"] == "smear_field_1.png" and len(x["box_x0_y0_x1_y1"].split()) == 4 for x in rows)
    assert all(x["scale_source"] == "red cells" and float(x["um_per_px"]) > 0 for x in rows)
    classified = [x for x in rows if x["status"] in ("ok", "rejected")]
    assert len(classified) == 2
    assert "cut by the field's border" in r.stderr
    assert "3 nucleated cells found, 1 cut by the border" in r.stdout
    assert "For research use only" in r.stdout


def test_cells_origin_column_and_field_images_are_added_to_an_older_database_and_kept(tmp_path):
    """A database from before smear fields (no ``cells.origin``, no ``field_images``) is upgraded in place; a case
    then stores each field cell's source field and box and the field image, and deleting the case removes them."""
    from bmcore.cases import CaseStore, CellInput
    from tests.conftest import actor

    url = f"sqlite:///{tmp_path / 'old.db'}"
    first = CaseStore(url)
    old_id = first.create_case("OLD", [CellInput(name="a.jpg", ok=True, predicted="LYT", confidence=0.9)],
                               actor=actor(first))
    with first.engine.begin() as c:  # the schema as the previous version left it
        c.exec_driver_sql("ALTER TABLE cells DROP COLUMN origin")
        c.exec_driver_sql("DROP TABLE field_images")
    first.engine.dispose()
    store = CaseStore(url)
    assert store.get_case(old_id).cells[0].origin is None and store.field_images(old_id) == []
    rgb = synthetic_field()
    res = F.find_cells(rgb)
    record = F.field_record({"name": "f.png", "rgb": rgb, "scale": res.scale, "cells": res.cells})
    origin = {"field": "f.png", "box": list(res.cells[0].box), "cell_number": 1, "um_per_px": res.scale.um_per_px,
              "scale_source": res.scale.source}
    cid = store.create_case("NEW", [CellInput(name="f.png #1", ok=True, pending=True, origin=origin)],
                            actor=actor(store), field_images=[record])
    assert store.get_case(cid).cells[0].origin == origin
    (shot,) = store.field_images(cid)
    assert (shot["name"], shot["width"], shot["height"]) == ("f.png", 640, 480)
    drawn = fielddraw.draw_field(shot["image"], 640, 480, [(1, tuple(origin["box"]), fielddraw.class_colour("LYT", ["BLA", "LYT"]))])
    assert drawn.shape == (480, 640, 3)
    x0, y0 = origin["box"][:2]
    assert tuple(drawn[y0 + 20, x0 + 1]) == pytest.approx(fielddraw.BOX_COLOURS[1], abs=40)  # the box's edge, LYT's colour
    store.delete_case(cid, actor(store))
    assert store.field_images(cid) == []


def test_the_field_is_drawn_with_a_red_cell_at_the_scale_used_where_no_cell_is():
    """The drawn field carries a 7.5 µm red cell at the scale the finder used: on the synthetic field (red cells
    100 px across) the estimated scale draws it about 100 px across (117), in the first corner clear of the cells' boxes;
    a scale 4x too coarse (as the red-cell estimate gave one real field) draws it 4x too small, which a reader sees
    beside the field's red cells."""
    rgb = synthetic_field()
    res = F.find_cells(rgb)
    ok, jpg = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    boxes = [(k, c.box, (0, 0, 255)) for k, c in enumerate(res.cells, 1)]
    (cx, cy), r = fielddraw.red_cell_gauge(640, 480, res.scale.um_per_px, [b for _, b, _ in boxes])
    assert 2 * r == pytest.approx(100, rel=0.2)  # 117: the span factor is fitted on real red cells, not discs
    assert all(not (b[0] < cx + r and cx - r < b[2] and b[1] < cy + r and cy - r < b[3]) for _, b, _ in boxes)
    plain = fielddraw.draw_field(jpg.tobytes(), 640, 480, boxes)
    drawn = fielddraw.draw_field(jpg.tobytes(), 640, 480, boxes, res.scale.um_per_px)
    edge = drawn[round(cy), round(cx + r)]
    assert (edge.max() < 60 or edge.min() > 200) and not np.array_equal(edge, plain[round(cy), round(cx + r)])
    assert np.array_equal(drawn[round(cy), round(cx)], plain[round(cy), round(cx)])  # an outline: the inside shows
    _, small = fielddraw.red_cell_gauge(640, 480, 4 * res.scale.um_per_px, [])
    assert small == pytest.approx(r / 4)


def test_a_camera_sized_field_is_searched_reduced_and_boxed_in_its_own_pixels(bccd):
    """A real field enlarged to a 12-megapixel photo (4000x3000) gives the same cells as the original, boxes and
    scale in the large image's pixels (nuclei within 2 original px, x6.25; cell boxes within 10), whether the scale is estimated or given."""
    rgb = np.asarray(Image.open(bccd / "JPEGImages" / "BloodImage_00193.jpg").convert("RGB"))
    small = F.find_cells(rgb)
    big_rgb = cv2.resize(rgb, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    for given in (None, small.scale.um_per_px / 6.25):
        big = F.find_cells(big_rgb, um_per_px=given)
        assert big.size == (4000, 3000) and any("searched at 1280x960" in n for n in big.notes)
        assert [c.border for c in big.cells] == [c.border for c in small.cells] == [False, True]
        for a, b in zip(small.cells, big.cells):
            assert max(abs(6.25 * u - v) for u, v in zip(a.nucleus_box, b.nucleus_box)) <= 2 * 6.25
            # the cell box is learned (trees: a step function of the features), so resampling may move it a step
            assert max(abs(6.25 * u - v) for u, v in zip(a.box, b.box)) <= 10 * 6.25  # measured 8.4 original px
        assert abs(big.scale.um_per_px * 6.25 / small.scale.um_per_px - 1) < 0.08
        crop = F.crop_cell(big_rgb, big.whole[0], 250)  # cut from the full-resolution field
        assert crop.size == (250, 250)


def test_a_partial_field_case_is_resumed_by_uploading_the_same_field_again(tmp_path):
    """Cutting cells out of a field is deterministic: the same field uploaded again gives the same crops, which
    match the case's pending cells (bmcore.jobs.match_pending), with their source field and box kept."""
    from bmcore.cases import CaseStore
    from bmcore.jobs import match_pending, pending_inputs
    from tests.conftest import actor

    buf = io.BytesIO()
    Image.fromarray(synthetic_field()).save(buf, format="PNG")
    items, _ = F.expand_fields([InputItem("field.png", buf.getvalue())], 250)
    store = CaseStore(f"sqlite:///{tmp_path / 'c.db'}")
    cid = store.create_case("P", pending_inputs(items), actor=actor(store))
    case = store.get_case(cid)
    assert [c.origin["cell_number"] for c in case.cells] == [1, 2, 3] and [c.pending for c in case.cells] == \
        [True, True, False]
    again, _ = F.expand_fields([InputItem("field.png", buf.getvalue())], 250)
    pairs, extra = match_pending(case, again)
    assert [(pos, it.name) for pos, it in pairs] == [(0, "field.png #1"), (1, "field.png #2")]
    assert extra == ["field.png #3"]  # the border-cut cell: nothing to classify
