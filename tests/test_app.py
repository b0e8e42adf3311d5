"""Headless tests of every page with streamlit.testing.v1.AppTest, on real crops."""

import pytest
from streamlit.testing.v1 import AppTest

from bmcore.cases import CaseStore
from tests.conftest import DEV_CLASSES, REPO, make_bundle


@pytest.fixture
def env(tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path / 'cases.db'}"
    monkeypatch.setenv("BM_DATABASE_URL", db)
    monkeypatch.setenv("BM_MODELS_DIR", str(tmp_path / "models"))
    eight = make_bundle(tmp_path / "models" / "eight", DEV_CLASSES)
    hac = make_bundle(tmp_path / "models" / "hac", ["HAC", "LYT", "MON", "EOS", "NGS"], task="hcl7", seed=3)
    return {"db": db, "eight": str(eight.path), "hac": str(hac.path)}


def app(env, bundle="eight", **state) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    at.session_state["bundle"] = env[bundle]
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def upload(at: AppTest, case: str, files, extra=()) -> AppTest:
    at.switch_page("pages/classify.py").run()
    at.text_input(key="new_case_code").set_value(case)
    at.file_uploader(key="uploads").set_value([(f.name, f.read_bytes(), "image/jpeg") for f in files] + list(extra))
    at.run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


def metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def real(crops, per_class=2):
    return [f for c in DEV_CLASSES for f in crops[c][:per_class]]


def test_home_lists_classes_and_statement(env):
    at = app(env)
    text = " ".join(m.value for m in at.markdown)
    assert "BLA (Blast)" in text and "EBO (Erythroblast)" in text  # covered and not covered
    assert any("For research use only" in w.value for w in at.warning)


def test_classify_table_uncertain_bin_and_unreadable(env, crops):
    files = real(crops)
    at = upload(app(env, threshold=0.99), "C-1", files, [("broken.jpg", b"\xff\xd8garbage", "image/jpeg")])
    assert metric(at, "Cells classified") == str(len(files))
    assert metric(at, "Unreadable files") == "1"
    # an untrained model is never 99% sure: every cell lands in the uncertain bin
    assert metric(at, "Uncertain") == str(len(files))
    bad = at.dataframe[0].value
    assert list(bad.file) == ["broken.jpg"]
    assert "not a recognised" in bad.error.iloc[0] or "corrupt" in bad.error.iloc[0]
    table = at.dataframe[1].value
    assert len(table) == len(files) and set(table.file) == {f.name for f in files}
    assert table.confidence.between(0, 1).all() and table.uncertain.all()
    case = CaseStore(env["db"]).get_case(at.session_state["case_id"])
    assert [c.name for c in case.cells if c.ok] == [f.name for f in files]


def test_threshold_zero_means_no_uncertain_and_duplicate_case_refused(env, crops):
    at = upload(app(env, threshold=0.0), "C-2", real(crops, 1))
    assert metric(at, "Uncertain") == "0"
    upload(at, "C-2", real(crops, 1))
    assert any("already exists" in e.value for e in at.error)


def test_cell_view_heatmap(env, crops):
    at = upload(app(env, threshold=0.0), "C-3", real(crops, 1))
    imgs = at.get("image")
    assert len(imgs) >= 2, "the cell view shows the crop and its heatmap"
    at.selectbox(key="cam_method").set_value("layercam").run()
    at.slider(key="cam_opacity").set_value(0.8).run()
    assert not at.exception


def test_differential_matches_stored_labels(env, crops):
    files = real(crops, 3)
    at = upload(app(env, threshold=0.0), "C-4", files)
    case = CaseStore(env["db"]).get_case(at.session_state["case_id"])
    expect = {}
    for c in case.cells:
        if c.predicted not in ("ART", "NIF"):
            expect[c.predicted] = expect.get(c.predicted, 0) + 1
    at.switch_page("pages/differential.py").run()
    assert not at.exception
    if expect:
        df = at.dataframe[0].value
        assert dict(zip(df["class"], df["count"])) == expect
        assert df.percent.sum() == pytest.approx(100, abs=0.5)
    assert metric(at, "M:E ratio") == "n/a"  # the 8-class model knows no erythroid precursors


def test_hairy_screen_disabled_with_default_classes(env, crops):
    at = upload(app(env), "C-5", real(crops, 1))
    at.switch_page("pages/hairy_cells.py").run()
    assert any("not available with this model" in i.value for i in at.info)


def test_hairy_flag_and_alert_with_hac_model(env, crops):
    files = real(crops, 2)
    at = upload(app(env, "hac", threshold=0.0, hairy_threshold=0.2), "C-6", files)
    case = CaseStore(env["db"]).get_case(at.session_state["case_id"])
    flagged = [c for c in case.cells if c.probabilities["HAC"] >= 0.2]
    assert [c.hairy_flag for c in case.cells] == [c.probabilities["HAC"] >= 0.2 for c in case.cells]
    at.switch_page("pages/hairy_cells.py").run()
    if flagged:
        alert = at.error[0].value
        assert f"{len(flagged)} suspected hairy cell" in alert
        assert f"{100 * len(flagged) / len(files):.1f}%" in alert
    else:
        assert at.success
    assert metric(upload(app(env, "hac", threshold=0.0, hairy_threshold=0.05), "C-7", files),
                  "Hairy-cell flags") == str(len(files))  # P(HAC) of 5 classes is never below 0.05 here


def test_review_signoff_reopen_audit(env, crops):
    files = real(crops, 1)[:4]
    at = upload(app(env, threshold=0.99), "C-8", files)
    at.switch_page("pages/review.py").run()
    at.text_input(key="_w_reviewer").set_value("Dr Test").run()
    at.button(key="sign_off").click().run()
    assert any("uncertain" in e.value for e in at.error)  # refused while uncertain cells are open
    cells = at.selectbox(key="review_cell").options
    assert len(cells) == 4
    # reclassify the first, confirm the rest
    at.selectbox(key="review_cell").set_value(at.selectbox(key="review_cell").value).run()
    first = at.session_state["review_cell"]
    at.selectbox(key=f"label_{first}").set_value("PLM").run()
    at.button(key="save_btn").click().run()
    assert any("set to PLM" in s.value for s in at.success)
    for _ in range(3):
        at.button(key="confirm_btn").click().run()
        assert not at.error, [e.value for e in at.error]
    at.button(key="sign_off").click().run()
    assert any("signed off" in s.value for s in at.success)
    store = CaseStore(env["db"])
    case = store.get_case(at.session_state["case_id"])
    assert case.status == "signed" and case.signed_by == "Dr Test"
    assert sorted(c.label for c in case.cells).count("PLM") == 1
    at.button(key="reopen").click().run()
    assert any("reason" in e.value for e in at.error)  # reopening needs a reason
    at.text_input(key="reopen_reason").set_value("wrong smear").run()
    at.button(key="reopen").click().run()
    actions = [a["action"] for a in store.audit(case.id)]
    assert actions[0] == "create" and actions.count("reclassify") == 1 and actions.count("confirm") == 3
    assert actions[-2:] == ["sign-off", "reopen"]


def test_export_page_and_model_pages(env, crops):
    at = upload(app(env, threshold=0.0), "C-9", real(crops, 1))
    at.switch_page("pages/export.py").run()
    assert not at.exception and any("not signed off" in w.value for w in at.warning)
    at.switch_page("pages/model_card.py").run()
    assert not at.exception and any("Not covered" in w.value for w in at.warning)
    assert any("no out-of-distribution gate" in i.value for i in at.info)
    at.switch_page("pages/model_comparison.py").run()
    assert not at.exception
    published = at.dataframe[-1].value
    assert {"000", "001", "003", "004"} <= set(published.seed)


def test_rejected_bin_is_left_out_of_the_differential(env, crops):
    """With the default bundle's gate: a blank image and a screenshot get no class, their own bin, no count."""
    import io

    import numpy as np
    from PIL import Image

    from bmcore.bundle import load_bundle
    from bmcore.cli import default_bundle
    from bmcore.report import REJECTED
    from train.ood import _screenshot

    def png(im):
        buf = io.BytesIO()
        im.save(buf, "PNG")
        return buf.getvalue()

    blank = png(Image.new("RGB", (250, 250), (214, 190, 205)))
    shot = png(_screenshot(np.random.default_rng(0)))
    env = {**env, "default": str(default_bundle())}
    files = real(crops, 1)
    at = upload(app(env, bundle="default", threshold=0.0), "C-R", files,
                [("blank.png", blank, "image/png"), ("screen.png", shot, "image/png")])
    case = CaseStore(env["db"]).get_case(at.session_state["case_id"])
    rejected = [c for c in case.cells if c.rejected]
    assert {"blank.png", "screen.png"} <= {c.name for c in rejected}
    assert all(c.reject_reason and c.label is None for c in rejected)
    assert metric(at, "Rejected: not a cell crop") == str(len(rejected))
    assert metric(at, "Cells classified") == str(len(case.cells) - len(rejected))
    shown = next(d.value for d in at.dataframe if "reason" in d.value.columns)
    assert set(shown.file) == {c.name for c in rejected}
    at.switch_page("pages/differential.py").run()
    assert not at.exception
    counted = at.dataframe[0].value["count"].sum()
    assert counted == sum(1 for c in case.cells if c.label and c.label not in ("ART", "NIF"))
    assert any(f"{REJECTED}: {len(rejected)}" in c.value for c in at.caption)
    # a reviewer who recognises a rejected image as a cell can still count it
    store = CaseStore(env["db"])
    cell = next(c for c in rejected if c.name == "blank.png")
    store.review_cell(cell.id, "rev", "LYT", expected_version=cell.version)
    assert store.get_case(case.id).cells[cell.position].label == "LYT"
    # the model card states the gate's measured figures, from the bundle
    at.switch_page("pages/model_card.py").run()
    assert not at.exception
    ood = load_bundle(default_bundle()).meta["ood"]
    assert metric(at, "Real test crops refused") == f"{ood['test_rejection']:.1%}"
    assert metric(at, "AUROC, unfamiliar vs real") == f"{ood['auroc']['gate']:.3f}"
