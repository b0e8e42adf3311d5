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
