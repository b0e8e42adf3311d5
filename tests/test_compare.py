"""The comparison command end to end on a tiny budget, and the committed result files against the page's schema."""

import json

import pandas as pd
import pytest
import yaml

from bmcore.comparison import load_results, validate
from tests.conftest import REPO


def test_compare_runs_end_to_end_on_tiny_budget(tmp_path, dev_root):
    s = pd.read_csv(REPO / "train" / "splits" / "bm-dev_seed42.csv")
    s = s[s.label.isin(["BLA", "EOS", "LYT"])].groupby(["split", "label"]).head(4)
    s.to_csv(tmp_path / "tiny.csv", index=False)
    cfg = {"out": str(tmp_path / "out"),
           "common": {"data_root": str(dev_root), "splits": str(tmp_path / "tiny.csv"), "task": "bm14", "tta": "off",
                      "threads": 1},
           "budget": {"img_size": 48, "epochs": 1, "batch_size": 4, "max_steps": 2},
           "runs": [{"key": "cnn", "backbone": "small_cnn", "weights": "none"},
                    {"key": "mnv2", "backbone": "mobilenetv2", "weights": "auto"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    from train.compare import main

    assert main(["--config", str(tmp_path / "c.yaml"), "--runs-dir", str(tmp_path / "runs")]) == 0
    res = {r["key"]: r for r in load_results(tmp_path / "out")}
    assert set(res) == {"cnn", "mnv2"}
    assert res["cnn"]["weights_source"] == "random-init" and res["mnv2"]["weights_source"].startswith("pip:")
    assert all(0 < r["gflops"] < 1 and r["cpu_ms_per_cell"] > 0 for r in res.values())
    assert res["cnn"]["metrics"]["n"] == 12 and "--img-size 48" in res["cnn"]["command"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["runs"] == ["cnn", "mnv2"] and summary["budget"]["img_size"] == 48
    # --retime re-measures every result in one run and says so; --table writes the Markdown table between markers
    assert main(["--config", str(tmp_path / "c.yaml"), "--runs-dir", str(tmp_path / "runs"), "--retime"]) == 0
    again = {r["key"]: r for r in load_results(tmp_path / "out")}
    assert all("re-timed in one run" in r["cpu_timed"] and r["cpu_ms_per_cell"] > 0 for r in again.values())
    from bmcore.comparison import TABLE_END, TABLE_START

    (tmp_path / "doc.md").write_text(f"intro\n{TABLE_START}\nold\n{TABLE_END}\nend\n")
    assert main(["--config", str(tmp_path / "c.yaml"), "--table", str(tmp_path / "doc.md")]) == 0
    doc = (tmp_path / "doc.md").read_text()
    assert doc.startswith("intro\n") and doc.endswith("end\n") and "old" not in doc
    assert doc.count("| random-init") == 0 and doc.count("| scratch |") == 1 and doc.count("| ImageNet (pip) |") == 1


def test_committed_comparison_results_match_schema():
    folder = REPO / "assets" / "comparison"
    files = [p for p in folder.glob("*.json") if p.name != "summary.json"] if folder.is_dir() else []
    if not files:
        pytest.skip("no comparison results committed yet (the study has not been run)")
    for p in files:
        assert validate(json.loads(p.read_text())) == [], p.name
    assert len(load_results(folder)) == len(files)


def test_written_summary_shows_the_committed_results():
    """docs/comparison.md's table is generated from assets/comparison and must match the committed results."""
    from bmcore.comparison import TABLE_END, TABLE_START, load_results, markdown_table

    doc = (REPO / "docs" / "comparison.md").read_text()
    shown = doc[doc.index(TABLE_START):doc.index(TABLE_END) + len(TABLE_END)]
    results = load_results(REPO / "assets" / "comparison")
    assert shown == markdown_table(results)
    assert len(results) == len(json.loads((REPO / "assets" / "comparison" / "summary.json").read_text())["runs"])


def test_studies_longest_budget_first_and_weights_groups(tmp_path):
    from bmcore.comparison import (PRETRAINED, SCRATCH, budget_changes, find_studies, load_summary, study_label,
                                   weights_group)

    for name, epochs in [("comparison", 3), ("comparison_gpu", 40), ("comparison_mid", 10), ("other", 99)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"budget": {"epochs": epochs, "img_size": 224}}))
    (tmp_path / "comparison_empty").mkdir()  # no summary.json: not a study
    assert [p.name for p in find_studies(tmp_path)] == ["comparison_gpu", "comparison_mid", "comparison"]
    assert "comparison" in [p.name for p in find_studies(REPO / "assets")]
    assert study_label(load_summary(tmp_path / "comparison"), [{"hardware": "2-core CPU"}]) == \
        "3 epochs, 224 px, 2-core CPU"
    assert study_label({"title": "30 epochs on a GPU", "budget": {"epochs": 30}}, []) == "30 epochs on a GPU"
    assert [weights_group(s) for s in ("pip:x.pth", "timm:resnet50", "file:w.pth", "random-init", "")] == \
        [PRETRAINED, PRETRAINED, PRETRAINED, SCRATCH, SCRATCH]
    # a bundle fine-tuned from another (--init-from) is grouped by where the chain began, as train.train records it
    chain = "bundle:a sha256:1 (itself from bundle:b sha256:2 (itself from {}))"
    assert [weights_group(chain.format(s)) for s in ("pip:x.pth", "random-init")] == [PRETRAINED, SCRATCH]
    vgg = json.loads((REPO / "assets" / "comparison" / "vgg16.json").read_text())
    budget = load_summary(REPO / "assets" / "comparison")["budget"]
    assert budget_changes(vgg, budget) == "lr 0.0003" and budget_changes({"command": "x"}, budget) == ""


# -- the page as a lesson (AppTest) ------------------------------------------------------------------------------

def _lesson_page(env):
    from tests.test_app import comparison_page

    return comparison_page(env)


def _study_rows():
    from bmcore.bundle import load_bundle
    from bmcore.cli import default_bundle
    from bmcore.comparison import find_studies, load_summary, result_from_bundle

    study = find_studies(REPO / "assets")[0]
    return result_from_bundle(load_bundle(default_bundle())), load_results(study), load_summary(study)["budget"]


def _like_chart(at):
    """The like-with-like bar chart: the one chart of one trace whose bars say their epochs."""
    import plotly.io as pio

    charts = [pio.from_json(c.proto.spec) for c in at.get("plotly_chart")]
    found = [f for f in charts if len(f.data) == 1 and "epochs" in (f.data[0].texttemplate or "")]
    assert len(found) == 1, [f.data[0].texttemplate for f in charts if f.data]
    return found[0]


def _rows_named_in_lesson(lesson: str, deployed: dict, results: list[dict]) -> None:
    from bmcore.comparison import PRETRAINED, SCRATCH, weights_group

    lines = {g: next(ln for ln in lesson.splitlines() if ln.strip().startswith(f"- From {w} weights"))
             for g, w in ((PRETRAINED, "ImageNet"), (SCRATCH, "random"))}
    for r in [deployed] + results:
        g = weights_group(r["weights_source"])
        label, names = lines[g].split(": ", 1)
        named = [n.strip() for n in names.split("; ")]
        each = f", {r['epochs']} epochs each" in label and r is not deployed  # every row of the group got as many
        assert (r["title"] in named) if each else any(
            n == f"{r['title']}: {r['epochs']}" or n.startswith(f"{r['title']}: {r['epochs']}, ") for n in named), \
            (r["title"], lines[g])
        other = [n.strip() for n in lines[SCRATCH if g == PRETRAINED else PRETRAINED].split(": ", 1)[1].split("; ")]
        assert not any(n == r["title"] or n.startswith(f"{r['title']}: ") for n in other), (r["title"], other)
    assert f"{deployed['title']}: {deployed['epochs']}, its own recipe" in lines[PRETRAINED]


def test_lesson_names_every_row_with_its_start_and_epochs_and_puts_the_vgg16_claim_in_context(env):
    """In every study the lesson lists each row of the page under the starting weights the data gives it, with the
    epochs its file records; its published figures are the ones of assets/published (the documents by their authors,
    never by a seed file number), and the VGG16 "~8%" stands beside what guessing gets, VGG16 from pretrained weights
    in the 2025 paper, and VGG16 in the study on the page."""
    from bmcore.comparison import find_studies

    pub = pd.read_csv(REPO / "assets" / "published" / "seeds_published.csv", dtype={"seed": str})
    fig = {(s, m, k): f"{v:.0%}" for s, m, k, v in pub[["seed", "model", "metric", "value"]].itertuples(index=False)}
    shah = pub[(pub.seed == "003") & (pub.metric == "val_accuracy") & ~pub.model.str.contains("Custom")].value
    deployed, _, _ = _study_rows()
    at = _lesson_page(env)
    for study in find_studies(REPO / "assets"):  # the GPU study opens first (runs of 10-30 epochs), then 3 epochs each
        at.selectbox(key="cmp_study").select(str(study)).run()
        assert not at.exception, at.exception
        results = load_results(study)
        lesson = next(m.value for m in at.markdown if "Most of the difference is the starting point" in m.value)
        _rows_named_in_lesson(lesson, deployed, results)
        for key in [("000", "EfficientNetB7", "accuracy"), ("000", "VGG16", "accuracy"),
                    ("001", "ResNet-50", "accuracy"), ("001", "ViT-B/16 (in21k)", "accuracy"),
                    ("003", "VGG16", "val_accuracy"), ("004", "EfficientNet-B0 + SE", "accuracy")]:
            assert fig[key] in lesson, key
        assert f"reached {shah.min():.0%} to {shah.max():.0%} validation accuracy" in lesson
        vgg = next(r for r in results if r["backbone"] == "vgg16")
        assert f"from scratch in this study, {vgg['metrics']['accuracy']:.0%} test accuracy in {vgg['epochs']} " \
               "epochs" in lesson
        assert "guessing gets about 7% (1 in 14)" in lesson and "no class count, split, number of epochs" in lesson
        assert "learning rate too high" not in lesson  # no cause the README never gave
        words = lesson
        for t in sorted((r["title"] for r in results), key=len, reverse=True):  # a result file's own title
            words = words.replace(t, "")  # may name a seed ("denoise + sharpen (seed 003)"): that is data
        assert "seed 0" not in words.lower()
        for name in ("Raza, Umer and Hussain", "Joshi", "Shah, Nadar and Kanikar (2025)", "Sharif (2024)"):
            assert name in lesson
    # the published table keeps the documents' file numbers in its data, off the screen
    table = at.dataframe[-1]
    assert "seed" in table.value.columns and "seed" not in list(table.proto.column_order)
    assert "published in" in table.proto.columns


def test_like_with_like_shows_only_one_start_and_one_training_length(env):
    """In every study, each starting point and each training length the picker offers draws exactly the study's runs
    of that start, trained with its budget and for that many epochs (checked against the result files); a length with
    one network says there is nothing to compare; a study whose runs all got the same epochs offers no length."""
    from bmcore.comparison import PRETRAINED, SCRATCH, budget_changes, find_studies, load_summary, weights_group

    deployed, _, _ = _study_rows()
    at = _lesson_page(env)
    for study in find_studies(REPO / "assets"):
        at.selectbox(key="cmp_study").select(str(study)).run()
        results, budget = load_results(study), load_summary(study)["budget"]
        by_title = {r["title"]: r for r in results}
        seen_alone = 0
        for group in (PRETRAINED, SCRATCH):
            at.radio(key="cmp_like_group").set_value(group).run()
            assert not at.exception, at.exception
            same = [r for r in results if weights_group(r["weights_source"]) == group and not budget_changes(r, budget)]
            lengths = sorted({r["epochs"] for r in same})

            def box():
                return [b for b in at.selectbox if (b.key or "").startswith(f"cmp_like_epochs::{group}::")]

            assert len(box()) == (len(lengths) > 1)
            assert set(_like_chart(at).data[0].y) == {r["title"] for r in same}  # the default: the whole budget
            for e in (lengths if box() else []):
                box()[0].set_value(e).run()
                assert not at.exception, at.exception
                drawn = list(_like_chart(at).data[0].y)
                assert set(drawn) == {r["title"] for r in same if r["epochs"] == e}
                for t in drawn:  # never a row of another start, another budget, another length, nor the deployed model
                    r = by_title[t]
                    assert weights_group(r["weights_source"]) == group and r["epochs"] == e
                    assert not budget_changes(r, budget) and t != deployed["title"]
                alone = any("there is nothing to compare here" in i.value for i in at.info)
                assert alone == (len(drawn) == 1)
                seen_alone += alone
        if len({r["epochs"] for r in results}) > 1:
            assert seen_alone, "a study whose guard gave runs different epochs has a length with one network"
