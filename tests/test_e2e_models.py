"""Model updates in a real browser (Debian's chromium driven by Playwright), two admins in two browser contexts: a
candidate learnt from the lab (a real bundle with a report, as train.learn writes them) meets its criteria; the first
admin approves it with their password and it becomes the model for new cases; the second admin's page, drawn before
that, is refused when it approves too; a technologist's Classify page open since before the approval is told of
it at its next step and classifies with it, as does a new session, while an earlier case keeps its own; the first admin restores the shipped default. Screenshots in
test-artifacts/e2e/models_*.png. Skipped where chromium or playwright is missing, unless BM_REQUIRE_E2E=1.
"""

import json
import shutil

from bench import appdriver
from bmcore.bundle import find_bundles, load_bundle, pick_default
from bmcore.cases import CaseStore
from tests.conftest import REPO, need_browser

ART = REPO / "test-artifacts" / "e2e"
TIMEOUT_S = 120
USERS = {**appdriver.USERS, "admin2": ("admin", "admin2-password-1")}


def _figs(macro, refusal, classes):
    return {"cells": 80, "macro_f1": macro, "accuracy": macro, "refused": int(80 * refusal), "refusal": refusal,
            "per_class_f1": {k: macro for k in classes}, "per_class_cells": {k: 10 for k in classes}}


def _candidate(tmp_path):
    """A learnt candidate as train.learn leaves it: a bundle of its own weights (the shipped default's, one bias moved
    by 1e-4, so its sha256 differs) with the gate and rule copied, and a report that meets its criteria."""
    import torch

    from bmcore.bundle import save_bundle, update_bundle_meta

    shipped = load_bundle(pick_default(find_bundles(REPO / "assets" / "models")))
    folder = tmp_path / "candidates" / "lab-1"
    model = shipped.build_model()
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("bias")).add_(1e-4)
    cand = save_bundle(folder / "bundle", model, task=shipped.meta["task"], classes=shipped.classes,
                       backbone=shipped.backbone, data_config=shipped.data_config, name="bm14-lab-1",
                       temperature=shipped.temperature,
                       extra={k: shipped.meta[k] for k in ("triage", "classes_missing_from_task") if k in shipped.meta})
    shutil.copy(shipped.path / shipped.meta["ood"]["file"], folder / "bundle")
    cand = update_bundle_meta(cand, ood=shipped.meta["ood"])
    report = {"criteria": {"lab_macro_f1_not_lower": True, "max_class_f1_drop": 0.02, "max_lab_refusal": 0.05},
              "figures": {"current": {"model": shipped.name, "weights_sha256": shipped.sha256,
                                      "lab_test": _figs(0.80, 0.097, shipped.classes)},
                          "candidate": {"model": cand.name, "weights_sha256": cand.sha256,
                                        "lab_test": _figs(0.85, 0.049, shipped.classes)}}}
    (folder / "report.json").write_text(json.dumps(report))
    return folder, cand, shipped


def _approve(page, password):
    page.get_by_label("Your password, to approve").fill(password)
    page.get_by_role("button", name="Approve for new cases").click()
    appdriver.wait_idle(page)


def test_two_admins_approve_a_candidate_only_one_takes_new_cases_change_and_the_default_is_restored(tmp_path):
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "cases.db"
    appdriver.add_users(db, USERS)
    store = CaseStore(f"sqlite:///{db}")
    folder, cand, shipped = _candidate(tmp_path)
    store.register_candidate(folder)
    env = {"BM_APPROVED_DIR": str(tmp_path / "approved"), "BM_CANDIDATES_DIR": str(tmp_path / "candidates")}
    with appdriver.app_server(db, tmp_path / "server.log", env_extra=env, users=USERS) as srv, \
            sync_playwright() as pw:
        browser = appdriver.launch(pw)
        ada, bob = appdriver.new_page(browser, TIMEOUT_S), appdriver.new_page(browser, TIMEOUT_S)
        for page, user in ((ada, "admin"), (bob, "admin2")):
            page.goto(srv.url)
            appdriver.sign_in(page, user, USERS[user][1])
            page.get_by_role("link", name="Model updates").first.click()
            appdriver.wait_idle(page)
            expect(page.get_by_text("Meets every acceptance criterion")).to_be_visible()
        before = appdriver.classified_case(db, "BEFORE-1", sorted((REPO / "assets" / "demo" / "crops").glob("*.jpg"))[:2])
        ada.screenshot(path=str(ART / "models_candidate.png"), full_page=True)
        early = appdriver.new_page(browser, TIMEOUT_S)  # a technologist's Classify page, open before the approval
        appdriver.goto(early, srv.url, "tech")
        early.get_by_role("link", name="Classify").first.click()
        appdriver.wait_idle(early)
        expect(early.get_by_text(f"New cases are classified by {shipped.name}")).to_be_visible()
        _approve(ada, USERS["admin"][1])
        expect(ada.get_by_text("is now the model for new cases")).to_be_visible()
        _approve(bob, USERS["admin2"][1])  # bob's page was drawn before ada's approval
        expect(bob.get_by_text("Not approved")).to_be_visible()
        expect(bob.get_by_text("after your page was drawn")).to_be_visible()
        bob.screenshot(path=str(ART / "models_stale_refused.png"), full_page=True)
        assert [e["action"] for e in store.model_events()] == ["registered", "approved"]

        # the page open before it follows the approval at its next step, says so, and classifies with it
        box = early.get_by_role("textbox", name="Case id")
        box.fill("EARLY-1")
        box.press("Enter")
        expect(early.get_by_text("New cases are now classified by")).to_be_visible()
        expect(early.get_by_text("New cases are classified by bm14-lab-1")).to_be_visible()
        early.screenshot(path=str(ART / "models_open_session_follows.png"))
        appdriver.settle(early)
        appdriver.upload(early, sorted((REPO / "assets" / "demo" / "crops").glob("*.jpg"))[:2])
        appdriver.classify(early, "EARLY-1")
        assert store.get_case(store.case_id("EARLY-1")).model_sha256 == cand.sha256

        tech = appdriver.new_page(browser, TIMEOUT_S)  # a session started after the approval
        appdriver.open_classify(tech, srv.url, "AFTER-1", "tech")
        expect(tech.get_by_text("bm14-lab-1").first).to_be_visible()
        appdriver.upload(tech, sorted((REPO / "assets" / "demo" / "crops").glob("*.jpg"))[:2])
        appdriver.classify(tech, "AFTER-1")
        after = store.get_case(store.case_id("AFTER-1"))
        assert after.model_name == "bm14-lab-1" and after.model_sha256 == cand.sha256 != shipped.sha256
        assert store.get_case(before).model_sha256 == shipped.sha256, "an earlier case keeps its model"

        ada.reload()
        appdriver.reload_signed_in(ada, "admin")
        ada.get_by_role("link", name="Model updates").first.click()
        appdriver.wait_idle(ada)
        ada.get_by_label("Your password, to restore").fill(USERS["admin"][1])
        ada.get_by_role("button", name="Restore for new cases").click()
        appdriver.wait_idle(ada)
        expect(ada.get_by_text("is the model for new cases again")).to_be_visible()
        assert store.active_model() is None and store.model_events()[-1]["action"] == "restored"
        ada.screenshot(path=str(ART / "models_restored.png"), full_page=True)
        browser.close()
