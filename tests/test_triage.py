"""The review ("triage") rule: its fitting on synthetic data, and the default bundle's stated figures on real data."""

import json

import numpy as np
import pytest

from bmcore.triage import ReviewRules, judge, rules_for_model
from tests.conftest import DEV_CLASSES, REPO
from train.triage import (GOAL_ACCURACY, GOAL_SENSITIVITY, critical_threshold, fit_rules, goal_text, review_mask,
                          summarize)

SPLITS = REPO / "train" / "splits" / "bm-dev_seed42.csv"


def _synthetic(n=3000, seed=0):
    """Probabilities of an imperfect 8-class model: some cells confident and right, some unsure, some wrong."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(DEV_CLASSES), n)
    logits = rng.normal(0, 1, (n, len(DEV_CLASSES)))
    logits[np.arange(n), y] += rng.uniform(-0.5, 6, n)
    bla = DEV_CLASSES.index("BLA")
    logits[y == DEV_CLASSES.index("PMO"), bla] += 1.5  # blasts and promyelocytes look alike
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y, rng.random(n) > 0.04  # ~4% refused by a gate


def test_fit_reaches_its_goals_on_the_data_it_was_fitted_on():
    p, y, acc = _synthetic()
    rules = fit_rules(p, y, DEV_CLASSES, acc, source="synthetic")
    assert set(rules.critical) == {"BLA"} and rules.hairy_flag_at is None
    s = summarize(p, y, DEV_CLASSES, rules, acc)
    assert s["gate_rejected"] == int((~acc).sum()) and s["n_accepted"] == int(acc.sum())
    assert s["auto_accuracy"] >= GOAL_ACCURACY
    assert s["blast_sensitivity"] >= GOAL_SENSITIVITY
    bla = DEV_CLASSES.index("BLA")
    true_bla = p[acc & (y == bla), bla]
    assert (true_bla >= rules.critical["BLA"]).mean() >= GOAL_SENSITIVITY
    # the largest such threshold (on its 0.001 grid): one step higher misses the goal
    assert (true_bla >= rules.critical["BLA"] + 0.001).mean() < GOAL_SENSITIVITY
    # the smallest confidence threshold reaching the goal (most cells auto-accepted): 0.01 lower misses it
    lower = ReviewRules(rules.uncertain_below - 0.01, rules.critical)
    assert summarize(p, y, DEV_CLASSES, lower, acc)["auto_accuracy"] < GOAL_ACCURACY
    # better than the old default (0.5, no blast rule) on both goals here
    old = summarize(p, y, DEV_CLASSES, ReviewRules(0.5), acc)
    assert old["auto_accuracy"] < GOAL_ACCURACY and old["blasts_auto_as_nonblast"] > s["blasts_auto_as_nonblast"]


def test_vectorised_decisions_match_judge():
    p, y, _ = _synthetic(400, seed=1)
    rules = fit_rules(p, y, DEV_CLASSES)
    unc, crit = review_mask(p, DEV_CLASSES, rules)
    for i in range(len(p)):
        u, c, _ = judge({k: float(v) for k, v in zip(DEV_CLASSES, p[i])}, rules)
        assert (u, bool(c)) == (bool(unc[i]), bool(crit[i]))


def test_critical_threshold_edges():
    assert critical_threshold(np.array([0.9, 0.5, 0.2345]), np.ones(3, bool), 0.6) == 0.5
    assert critical_threshold(np.array([0.9, 0.5, 0.2345]), np.ones(3, bool), 1.0) == 0.234
    assert critical_threshold(np.array([0.9]), np.zeros(1, bool)) is None
    # an unreachable accuracy goal sends everything to review rather than failing
    p, y, _ = _synthetic(200, seed=2)
    assert fit_rules(p, y, DEV_CLASSES, goal_accuracy=1.01).uncertain_below == 1.0


def test_a_model_without_a_fitted_rule_still_sends_possible_blasts_to_review():
    """No fitted triage: the built-in rule still reviews a cell whose P(blast) reaches a low threshold, whatever its
    top class; a fitted rule keeps its own threshold; a model without a blast class gets no blast rule."""
    from bmcore.triage import DEFAULT_BLAST_REVIEW_AT

    bare = rules_for_model({}, DEV_CLASSES)
    assert bare.critical == {"BLA": DEFAULT_BLAST_REVIEW_AT} and "no triage fitted" in bare.source
    assert "P(BLA) ≥ 0.10" in bare.describe()
    probs = {c: 0.0 for c in DEV_CLASSES} | {"PMO": 0.85, "BLA": 0.12, "MON": 0.03}  # confident, but maybe a blast
    uncertain, critical, _ = judge(probs, bare)
    assert not uncertain and critical == ["BLA"]
    fitted = rules_for_model({"triage": {"rules": {"uncertain_below": 0.9, "critical": {"BLA": 0.3}, "source": "f"}}},
                             DEV_CLASSES)
    assert fitted.critical == {"BLA": 0.3}
    assert rules_for_model({}, ["EOS", "LYT"]).critical == {}


def test_the_predictor_of_an_unfitted_bundle_flags_a_real_blast(tmp_path, dev_root):
    """The app's Predictor on the default bundle with its fitted rule removed: real blast crops whose P(blast)
    reaches the built-in threshold are marked critical (sent to review), none is left to bulk confirmation."""
    import shutil

    from bmcore.bundle import load_bundle
    from bmcore.cli import default_bundle
    from bmcore.predictor import Predictor

    b = load_bundle(shutil.copytree(default_bundle(), tmp_path / "b"))
    meta = json.loads((b.path / "bundle.json").read_text())
    meta.pop("triage", None)
    (b.path / "bundle.json").write_text(json.dumps(meta))
    pred = Predictor(load_bundle(b.path), gate=False)
    assert "no triage fitted" in pred.rules.source and pred.rules.critical.get("BLA") == 0.10
    cells = pred.predict(sorted((dev_root / "BLA").glob("*.jpg"))[:12])
    assert all(("BLA" in c.critical) == (c.probabilities["BLA"] >= 0.10) for c in cells)
    assert sum("BLA" in c.critical for c in cells) >= 10


# --- the default bundle, on real crops -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(dev_root):
    """The committed rule and the val + test crops, predicted once by the app's Predictor (~70 s on 2 cores)."""
    from bmcore.bundle import load_bundle
    from bmcore.cli import default_bundle
    from bmcore.predictor import Predictor
    from train.data import load_splits
    from train.triage import split_probabilities

    bundle = load_bundle(default_bundle())
    if "triage" not in bundle.meta:
        pytest.fail("the default bundle has no fitted triage rule: run python -m train.triage")
    pred = Predictor(bundle)  # as the app builds it
    df = load_splits(SPLITS)
    test = df[(df.split == "test") & df.label.isin(pred.classes)]
    cells = pred.predict([dev_root / p for p in test.path])  # the app's public path, cell by cell
    return {"bundle": bundle, "cells": cells, "labels": list(test.label),
            "val": split_probabilities(pred, dev_root, SPLITS, "val"),
            "eval": json.loads((bundle.path / "eval_triage.json").read_text())}


def test_stated_test_figures_reproduce_with_the_apps_predictor(real):
    b = real["bundle"]
    rules = rules_for_model(b.meta, b.classes)  # what a new case gets
    stated = b.meta["triage"]["test"]
    assert rules.to_dict() == b.meta["triage"]["rules"] and "val split" in rules.source
    assert "test split" in stated["split"] and stated["n"] == len(real["cells"]) == 810
    auto_ok = auto = blasts = flagged = rejected = ok_all = 0
    for cell, label in zip(real["cells"], real["labels"]):
        assert cell.ok
        if cell.rejected:  # the gate's own bin: no class, no review
            rejected += 1
            continue
        ok_all += cell.code == label
        uncertain, critical, _ = judge(cell.probabilities, rules)
        if not (uncertain or critical):
            auto += 1
            auto_ok += cell.code == label
        if label == "BLA":
            blasts += 1
            flagged += "BLA" in critical
    assert rejected == stated["gate_rejected"]
    assert auto == stated["auto_accepted"]
    assert auto_ok / auto == pytest.approx(stated["auto_accuracy"], abs=1e-6)
    assert flagged / blasts == pytest.approx(stated["blast_sensitivity"], abs=1e-6)
    assert flagged / blasts == pytest.approx(real["eval"]["test"]["rule"]["blast_sensitivity"], abs=1e-6)
    assert b.meta["triage"]["goal"] == goal_text()
    goal_acc, goal_sens = b.meta["triage"]["goal_accuracy"], b.meta["triage"]["goal_blast_sensitivity"]
    assert (goal_acc, goal_sens) == (GOAL_ACCURACY, GOAL_SENSITIVITY)
    # both goals are met on val by construction; on crops never used to choose the rule the default bundle misses
    # both (2026-11-27: auto-accepted 481/500 = 96.2% < 97%, blasts 101/109 = 92.7% < 95%; 500 cells and 109 blasts
    # are few): the bundle must say so, not claim the goals. The rule must still be far better than no rule, and
    # the cells it leaves to bulk confirmation near the goal
    assert auto_ok / auto >= max(goal_acc - 0.02, ok_all / (len(real["cells"]) - rejected) + 0.05)
    reached = auto_ok / auto >= goal_acc and flagged / blasts >= goal_sens
    assert b.meta["triage"]["goal_reached_on_test"] is reached is real["eval"]["goal_reached_on_test"]


def test_stored_rule_is_the_one_fitted_on_val(real):
    b = real["bundle"]
    p, y, acc = real["val"]
    refit = fit_rules(p, y, b.classes, acc)
    stored = ReviewRules.from_dict(b.meta["triage"]["rules"])
    assert refit.uncertain_below == pytest.approx(stored.uncertain_below, abs=1e-9)
    assert refit.critical.keys() == stored.critical.keys() == {"BLA"}
    assert refit.critical["BLA"] == pytest.approx(stored.critical["BLA"], abs=1e-9)
    assert stored.hairy_flag_at is None
    s = summarize(p, y, b.classes, stored, acc)
    assert s["auto_accuracy"] >= GOAL_ACCURACY and s["blast_sensitivity"] >= GOAL_SENSITIVITY
    assert s == real["eval"]["val"]["rule"]
