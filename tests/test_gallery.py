"""The review gallery (Review page, "Gallery by class"): what is confirmed is exactly what was drawn.

AppTest on a case made directly in the store (thumbnails are tiny generated JPEGs, no real crops needed)."""

import io

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from bmcore import caserules
from bmcore.bundle import load_bundle
from bmcore.cases import CaseStore, CellInput
from tests.conftest import DEV_CLASSES, REPO, actor


def _thumb(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (i * 3 % 255, 90, 160)).save(buf, "JPEG")
    return buf.getvalue()


def _case(env, n_lyt=50, n_bla=6, pending=0):
    store = CaseStore(env["db"])
    b = load_bundle(env["eight"])
    cells = [CellInput(f"l{i}.jpg", True, thumbnail=_thumb(i), predicted="LYT", confidence=0.97,
                       probabilities={"LYT": 0.97, "BLA": 0.03}) for i in range(n_lyt)]
    cells += [CellInput(f"b{i}.jpg", True, thumbnail=_thumb(i), predicted="BLA", confidence=0.6 + i / 100,
                        probabilities={"BLA": 0.6, "LYT": 0.4}, uncertain=True, critical="BLA") for i in range(n_bla)]
    cells += [CellInput(f"p{i}.jpg", True, pending=True) for i in range(pending)]
    cid = store.create_case("GAL-1", cells, actor=actor(store, "tess", "technologist"), model_name=b.name,
                            model_sha256=b.sha256, model_classes=list(b.classes))
    return store, cid


def _review(env, cid, who) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state["actor"] = who
    at.session_state["case_id"] = cid
    at.session_state["bundle"] = env["eight"]
    at.run()
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    return at


def _drawn(at, cid) -> set[int]:
    """The cell ids whose tick boxes this run drew."""
    return {int(c.key.split("_")[2]) for c in at.button_group if c.key and c.key.startswith(f"gsel_{cid}_")}


def _tick(at, key):
    """Tick a gallery cell (its one-option toggle)."""
    box = at.button_group(key=key)
    box.set_value(box.options)


def _button(at, text):
    return next(b for b in at.button if b.label.startswith(text))


def test_the_gallery_reads_blasts_first_and_confirms_only_the_cells_it_drew(env):
    store, cid = _case(env)
    tess = actor(store, "tess", "technologist")
    at = _review(env, cid, tess)
    assert at.button_group(key=f"_w_gal_group_{cid}").value == "BLA", "blasts first"
    drawn = _drawn(at, cid)
    bla = {c.id for c in store.get_case(cid).cells if c.predicted == "BLA"}
    assert drawn == bla
    # the LYT class has 50 cells: page 1 draws 40; confirming it takes those 40 and nothing else
    at.button_group(key=f"_w_gal_group_{cid}").set_value("LYT").run()
    page1 = _drawn(at, cid)
    assert len(page1) == 40
    _button(at, "Confirm this page").click().run()
    assert any("40 cell(s) confirmed" in s.value for s in at.success), [w.value for w in at.warning]
    reviewed = {c.id for c in store.get_case(cid).cells if c.final_label is not None}
    assert reviewed == page1, "exactly the drawn cells"
    # the 10 still to confirm now lead page 1; confirming it again takes them (the 30 reviewed ones drawn with them
    # already have their label: unchanged, not re-audited)
    left = {c.id for c in store.get_case(cid).cells if c.final_label is None and c.predicted == "LYT"}
    assert len(left) == 10 and left <= _drawn(at, cid)
    _button(at, "Confirm this page").click().run()
    assert any("10 cell(s) confirmed" in s.value and "30 already had that label" in s.value for s in at.success)
    assert sum(e["action"] == "confirm" for e in store.audit(cid)) == 50
    assert at.button_group(key=f"_w_gal_group_{cid}").options  # the class list still offers both classes


def test_move_ticked_cells_confirm_the_rest_undo_and_a_colleague_in_between(env):
    store, cid = _case(env, n_lyt=12, n_bla=4)
    tess, pat = actor(store, "tess", "technologist"), actor(store, "pat", "pathologist")
    at = _review(env, cid, tess)
    cells = {c.id: c for c in store.get_case(cid).cells}
    drawn = sorted(_drawn(at, cid))  # the 4 blasts
    _tick(at, f"gsel_{cid}_{drawn[0]}_{cells[drawn[0]].version}")
    _button(at, "→ LYT").click().run()
    assert any("1 cell(s) moved to LYT" in s.value for s in at.success), [w.value for w in at.warning]
    now = {c.id: c for c in store.get_case(cid).cells}
    assert now[drawn[0]].final_label == "LYT" and all(now[i].final_label is None for i in drawn[1:])
    # a colleague relabels a blast after this page was drawn; "confirm this page" leaves that one alone, names it
    store.review_cell(drawn[1], pat, "MON")
    _button(at, "Confirm this page").click().run()
    msg = " ".join(w.value for w in at.warning)
    assert "2 cell(s) confirmed" in msg and f"#{now[drawn[1]].position + 1} {now[drawn[1]].name}: changed by pat" in msg
    after = {c.id: c for c in store.get_case(cid).cells}
    assert after[drawn[1]].final_label == "MON" and after[drawn[1]].reviewed_by == "pat"
    assert [after[i].final_label for i in drawn[2:]] == ["BLA", "BLA"]
    # undo takes back exactly the last action
    _button(at, "Undo my last gallery action").click().run()
    back = {c.id: c for c in store.get_case(cid).cells}
    assert [back[i].final_label for i in drawn[2:]] == [None, None] and back[drawn[0]].final_label == "LYT"
    actions = [e["action"] for e in store.audit(cid)]
    assert actions.count("undo") == 2 and actions.count("reclassify") == 2


def test_no_button_on_any_page_confirms_a_cell_that_was_never_drawn(env):
    """Every button of the Review page (both modes) and of the other pages is pressed in turn: afterwards each
    reviewed cell is one that a run had drawn (gallery tick box or one-cell picker) before the press."""
    store, cid = _case(env, n_lyt=45, n_bla=2, pending=3)
    tess = actor(store, "tess", "technologist")
    drawn_ever: set[int] = set()
    for page in ("views/classify.py", "views/hairy_cells.py", "views/differential.py", "views/export.py",
                 "views/review.py"):
        at = _review(env, cid, tess)
        at.switch_page(page).run()
        for mode in (["Gallery by class", "One cell"] if page.endswith("review.py") else [None]):
            if mode:
                at.button_group(key=f"review_mode_{cid}").set_value(mode).run()
            drawn_ever |= _drawn(at, cid)
            if mode == "One cell":
                drawn_ever.add(at.session_state[f"review_cell_{cid}"])
            for key in [b.key or b.label for b in at.button]:
                btn = next((b for b in at.button if (b.key or b.label) == key), None)
                if btn is None or btn.disabled or key in ("sign_out",):
                    continue
                btn.click().run()
                assert not at.exception, (page, key, at.exception)
                drawn_ever |= _drawn(at, cid)
    reviewed = {c.id for c in store.get_case(cid).cells if c.final_label is not None}
    assert reviewed and reviewed <= drawn_ever
    pending = [c for c in store.get_case(cid).cells if caserules.status(c) == "pending"]
    assert all(c.final_label is None for c in pending)


def test_an_idle_sessions_click_saves_nothing_and_an_undo_never_reaches_across_a_signature(env):
    import datetime as dt

    from bmcore.cases import CaseError, utcnow
    from tests.conftest import TEST_PASSWORD

    store, cid = _case(env, n_lyt=3, n_bla=0)
    tess = actor(store, "tess", "technologist")
    at = _review(env, cid, tess)
    # the button's callback runs before the sign-in gate: it must refuse by itself
    at.session_state["active_at"] = utcnow() - dt.timedelta(minutes=31)
    _button(at, "Confirm this page").click().run()
    assert all(c.final_label is None for c in store.get_case(cid).cells), "an idle session saved nothing"
    assert "actor" not in at.session_state and [b.label for b in at.button] == ["Sign in"]
    # a move, then a signature and a reopening: the move can no longer be undone
    shown = {c.id: c.version for c in store.get_case(cid).cells}
    moved = store.review_cells(cid, tess, shown, label="MON")
    pat = actor(store, "pat", "pathologist")
    store.sign_off(cid, pat, password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    store.reopen(cid, pat, "one more look")
    with pytest.raises(CaseError, match="signed off since that action"):
        store.undo(cid, tess, moved.action_id)
    assert {c.final_label for c in store.get_case(cid).cells} == {"MON"}


def test_a_cell_of_a_class_the_model_lacks_is_offered_that_class_first(env):
    """A confident segmented neutrophil of a model that knows no bands: One cell says so and offers NGB first; the NGS
    gallery page says it and lists NGB first under Another class; a confident lymphocyte is offered EBO and PLM; a
    blast-free monocyte gets no hint. The mapping and what it caught on real crops: bench/unknown_class_hints.py."""
    from bmcore import caserules
    from bmcore.cases import CellInput

    store = CaseStore(env["db"])
    tess = actor(store, "tess", "technologist")
    cells = [CellInput("n.jpg", True, predicted="NGS", confidence=0.98), CellInput("l.jpg", True, predicted="LYT",
                                                                                   confidence=0.97),
             CellInput("m.jpg", True, predicted="MON", confidence=0.97)]
    cid = store.create_case("HINT", cells, actor=tess, model_classes=DEV_CLASSES)
    n, lyt, mon = store.get_case(cid).cells
    assert caserules.lacks_hint(n, DEV_CLASSES) == ["NGB"] and caserules.lacks_hint(lyt, DEV_CLASSES) == ["EBO", "PLM"]
    assert caserules.lacks_hint(mon, DEV_CLASSES) == [] and caserules.lacks_hint(n, DEV_CLASSES + ["NGB"]) == []
    at = _review(env, cid, tess)
    at.button_group(key=f"review_mode_{cid}").set_value("One cell").run()
    at.session_state[f"review_cell_{cid}"] = n.id
    at.run()
    assert any("cannot name band neutrophils (NGB)" in i.value for i in at.info)
    label = next(s for s in at.selectbox if s.label == "Label")
    assert label.options[0].startswith("NGB") and label.value == "NGS"  # offered first, the model's label kept
    at.button_group(key=f"review_mode_{cid}").set_value("Gallery by class").run()
    at.session_state[f"gal_group_{cid}"] = at.session_state[f"_w_gal_group_{cid}"] = "NGS"
    at.run()
    assert any("cannot name band neutrophils (NGB)" in c.value and "check these cells" in c.value for c in at.caption)
    other = next(s for s in at.selectbox if s.placeholder == "Another class…")
    assert other.options[0].startswith("NGB")
