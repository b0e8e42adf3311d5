"""Two app replicas on one PostgreSQL behind a real nginx, in real browsers: the deployment files of deploy/ as they
are (deploy/nginx.conf rendered by deploy/render.py, each replica started by deploy/replica.sh as systemd would).

On loopback: Debian's nginx with its sticky cookie and WebSockets in front of replica 1; reviewer A (technologist)
on replica 1 starts classifying a case of real crops; replica 2 starts while that job is in flight (replica 1 paused
by SIGSTOP meanwhile, so a fast machine cannot finish the job first), and reviewer B (pathologist) there sees it
running, not interrupted; replica 1 goes on, then is killed mid-job; replica 2 marks the job
interrupted (its owner is gone), shows the partial case, and B resumes it by uploading the same files again, each
cell classified once. Then, with replica 1 back: a stale save on replica 2 of a cell A relabelled on replica 1 is
refused; B signs a case off on replica 2 and A, on replica 1, finds it signed and cannot change it. Skipped where
chromium, nginx or the PostgreSQL server (BM_TEST_POSTGRES_URL) is missing, unless CI's BM_REQUIRE_E2E=1 /
BM_REQUIRE_POSTGRES=1. Leaves no process behind (every server in its own process group, stopped on exit).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

from bench import appdriver
from bmcore import caserules
from bmcore.cases import CaseStore
from tests.conftest import REPO, need_browser, need_or_fail, postgres_schema
from tests.test_e2e_review import _classified_positions as classified_positions, _copy as copy_files

ART = REPO / "test-artifacts" / "e2e"
TIMEOUT_S = 120
REPLICA = appdriver.REPLICA
CROPS = 800  # enough that the job is still running while replica 2 starts and while replica 1 is killed
PICKER = "Cell (flagged and uncertain first, then unreviewed)"


def _stick(url: str, log: Path, ports: tuple[int, int]) -> None:
    """A browser without the cookie gets one, and its later requests all reach the replica the cookie names."""
    with urllib.request.urlopen(url + "/_stcore/health") as r:
        got = re.search(r"bm_replica=(bm_replica_[12])", " ".join(r.headers.get_all("Set-Cookie") or []))
    assert got, "nginx set no sticky cookie"
    port = ports[int(got.group(1)[-1]) - 1]
    for i in range(6):  # marked, so the log lines are these six (the first request's line may land late)
        req = urllib.request.Request(url + f"/_stcore/health?stick={i}", headers={"Cookie": f"bm_replica={got.group(1)}"})
        with urllib.request.urlopen(req) as r:
            assert r.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in \
                r.headers["Content-Security-Policy"]
    time.sleep(0.3)
    ups = re.findall(r"upstream=(\S+)", "\n".join(ln for ln in log.read_text().splitlines() if "?stick=" in ln))
    assert len(ups) == 6 and set(ups) == {f"127.0.0.1:{port}"}, ups


def test_two_replicas_behind_nginx_share_cases_jobs_and_sign_off(dev_root, tmp_path):
    need_browser()
    need_or_fail(appdriver.nginx_missing())
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    pool = sorted(dev_root.rglob("*.jpg"))
    files = copy_files(pool[::len(pool) // CROPS][:CROPS], tmp_path / "up")
    small = copy_files([sorted((dev_root / c).glob("*.jpg"))[5] for c in ("BLA", "LYT", "NGS", "EOS")], tmp_path / "small")
    ports = (appdriver.free_port(), appdriver.free_port())
    shared = {"BM_CANDIDATES_DIR": str(tmp_path / "candidates"), "BM_APPROVED_DIR": str(tmp_path / "approved"),
              "BM_TRUST_PROXY": "1"}
    with postgres_schema() as url, appdriver.proxy(tmp_path / "nginx", ports) as (purl, access), sync_playwright() as pw, \
            contextlib.ExitStack() as servers:
        appdriver.add_users(url)
        store = CaseStore(url)

        def start(n: int, **env):
            return servers.enter_context(appdriver.app_server(url, tmp_path / f"replica{n}-{time.time_ns()}.log",
                                                              port=ports[n - 1], launcher=REPLICA, users=None,
                                                              env_extra={**shared, **env}))

        r1 = start(1, BM_INFERENCE_THREADS="1")  # one core: the job lasts long enough to be caught mid-way
        browser = appdriver.launch(pw)
        a = appdriver.new_page(browser, TIMEOUT_S)
        b = appdriver.new_page(browser, TIMEOUT_S)
        appdriver.pin_replica(a, purl, 1)
        appdriver.pin_replica(b, purl, 2)

        # A starts a job on replica 1 (through nginx: page, WebSocket and uploads)
        appdriver.open_classify(a, purl, "REP-1")
        appdriver.upload(a, files)
        a.get_by_role("button", name="Classify", exact=True).click()
        deadline = time.monotonic() + 180
        while not ((cid := store.case_id("REP-1")) and (job := store.latest_job(cid)) and job["done"] > 0):
            assert time.monotonic() < deadline, "the job on replica 1 never started"
            time.sleep(0.2)

        # replica 2 starts while the job is in flight; its first page (its job runner's start) must not call the job
        # interrupted. Replica 1 is paused (SIGSTOP: alive, its job not advancing) while replica 2 starts and B looks,
        # so the job is still in flight then however fast the machine is; then it goes on, and is killed.
        os.killpg(r1.proc.pid, signal.SIGSTOP)
        try:
            start(2)
            appdriver.open_case(b, purl, "REP-1", user="path")
            b.get_by_role("link", name="Classify").first.click()
            appdriver.settle(b)
            job = store.latest_job(cid)
            assert job["done"] < CROPS and job["status"] in ("queued", "running"), job
            expect(b.get_by_text("Partial case:")).to_have_count(0)
            b.screenshot(path=str(ART / "replicas_job_running_seen_on_2.png"), full_page=True)
        finally:
            os.killpg(r1.proc.pid, signal.SIGCONT)
        paused_at, deadline = job["done"], time.monotonic() + TIMEOUT_S
        while store.latest_job(cid)["done"] == paused_at:  # replica 1's job goes on after the pause
            assert time.monotonic() < deadline, "the job on replica 1 did not go on after the pause"
            time.sleep(0.05)

        # replica 1 dies mid-job; replica 2 sees its owner gone, marks it interrupted, and the case partial
        os.killpg(r1.proc.pid, signal.SIGKILL)
        r1.proc.wait(10)
        done_before = store.latest_job(cid)["done"]
        assert 0 < done_before < CROPS
        b.reload()
        appdriver.reload_signed_in(b, "path")
        b.get_by_role("link", name="Classify").first.click()
        appdriver.settle(b)
        expect(b.get_by_text("Partial case:")).to_be_visible()
        job = store.latest_job(cid)
        assert job["status"] == "interrupted" and job["done"] == done_before
        assert caserules.summary(store.get_case(cid)).pending == CROPS - done_before
        # B resumes it on replica 2: the same files again, only the missing cells classified
        appdriver.resume_with_same_files(b, files)
        case = store.get_case(cid)
        assert len(case.cells) == CROPS and not caserules.summary(case).pending
        assert sorted(classified_positions(store, cid)) == list(range(1, CROPS + 1)), "nothing classified twice"
        b.screenshot(path=str(ART / "replicas_resumed_on_2.png"), full_page=True)

        # replica 1 is back; A (on 1) and B (on 2) review one case: B's stale save is refused across replicas
        start(1)
        _stick(purl, access, ports)  # both replicas up: whichever the cookie names
        appdriver.classified_case(url, "REP-2", small)
        for page, user in ((a, "tech"), (b, "path")):
            appdriver.open_case(page, purl, "REP-2", user=user)
            page.get_by_role("link", name="Review").first.click()
            appdriver.settle(page)
            appdriver.review_mode(page, "One cell")
        first = appdriver.selectbox_text(a, PICKER)
        assert appdriver.selectbox_text(b, PICKER) == first
        no = int(re.match(r"#(\d+)", first).group(1))
        appdriver.relabel_then_stale(a, b, no, "PMO", "MON", "tech")
        cid2 = store.case_id("REP-2")
        got = next(c for c in store.get_case(cid2).cells if c.position == no - 1)
        assert (got.final_label, got.reviewed_by) == ("PMO", "tech")

        # B confirms the rest and signs off on replica 2; on replica 1 the case is signed and A cannot change it
        b.reload()
        appdriver.reload_signed_in(b, "path")
        appdriver.review_mode(b, "Gallery by class")
        appdriver.gallery_confirm_everything(b)
        appdriver.sign_off(b, appdriver.USERS["path"][1])
        expect(b.get_by_text(re.compile("Signed off by"))).to_be_visible()
        assert store.get_case(cid2).status == "signed"
        a.reload()
        appdriver.reload_signed_in(a, "tech")
        expect(a.get_by_text(re.compile("Signed off by"))).to_be_visible()
        expect(a.get_by_role("button", name="Save label")).to_have_count(0)
        a.screenshot(path=str(ART / "replicas_signed_seen_on_1.png"), full_page=True)
        browser.close()
        assert store.integrity_ok()
        store.engine.dispose()
    for log in tmp_path.glob("replica*.log"):
        text = log.read_text()
        assert "Traceback" not in text, f"{log.name}: {text[-2000:]}"
