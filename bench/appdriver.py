"""Drive the app in a real browser: the one place that knows how to start it and how to click through it.

Shared by tests/test_e2e_browser.py and bench/load.py. Playwright's sync API with Debian's chromium
(BM_CHROMIUM overrides the path). Elements are found by what a user sees (labels, roles, captions);
"the page has finished" is Streamlit's own marker, ``data-test-script-state="notRunning"`` on the app root.
The sync API is bound to the thread that opened it: give each thread its own ``sync_playwright()``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("BM_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1400, "height": 1000}
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
# accounts every driven server gets in its throw-away database: name -> (role, password)
USERS = {"tech": ("technologist", "tech-password-1"), "path": ("pathologist", "path-password-1"),
         "path2": ("pathologist", "path2-password-1"), "admin": ("admin", "admin-password-1"),
         "viewer": ("viewer", "viewer-password-1")}


def db_url(database: Path | str) -> str:
    """A server's database as an SQLAlchemy URL: a path is an SQLite file, a string with "://" a URL as it is."""
    return str(database) if "://" in str(database) else f"sqlite:///{database}"


def add_users(database: Path | str, users: dict = USERS) -> None:
    """Create the driver's accounts (those missing) in the server's database (a file or a URL)."""
    from bmcore.cases import CaseStore

    store = CaseStore(db_url(database))
    have = {u["username"] for u in store.list_users()}
    for name, (role, pw) in users.items():
        if name not in have:
            store.add_user(name, role, pw, display_name=f"{role.title()} {name}")
    store.engine.dispose()


def browser_missing() -> str | None:
    """Why a browser run cannot happen here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    if not Path(CHROMIUM).exists():
        return f"chromium not found at {CHROMIUM} (apt-get install chromium)"
    return None


REPLICA = REPO / "deploy" / "replica.sh"  # one app replica, as systemd runs it (deploy/bmapp@.service)
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_missing() -> str | None:
    return None if Path(NGINX).exists() else f"nginx not found ({NGINX}; apt-get install nginx)"


@contextmanager
def proxy(prefix: Path, ports: tuple[int, int]) -> Iterator[tuple[str, Path]]:
    """Debian's nginx from deploy/nginx.conf (rendered by deploy/render.py) in front of two replicas on
    127.0.0.1:ports, on a free loopback port; yields (its URL, its access log). Stopped on exit."""
    sys.path.insert(0, str(REPO / "deploy"))
    from render import render  # deploy/render.py: what an operator runs

    prefix.mkdir(parents=True, exist_ok=True)
    listen = free_port()
    conf = prefix / "nginx.conf"
    text = render(str(prefix), f"127.0.0.1:{listen}", f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}")
    # as root, nginx's workers would drop to "nobody", who cannot write a temporary folder of root's
    conf.write_text(("user root;\n" if os.geteuid() == 0 else "") + text)
    with open(prefix / "stderr.log", "w") as err:
        proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (prefix / "nginx.pid").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start: " + (prefix / "stderr.log").read_text()[-2000:])
            time.sleep(0.1)
        yield f"http://127.0.0.1:{listen}", prefix / "access.log"
    finally:
        _stop(proc)


@contextmanager
def fresh_schema(base: str) -> Iterator[str]:
    """``base`` (a PostgreSQL URL) in a schema of its own, created now and dropped after: a throw-away database for a
    test or benchmark that leaves the tables of the database it points at alone."""
    import uuid

    from sqlalchemy import create_engine, make_url

    schema = f"bmtest_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield make_url(base).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False)
    finally:
        with admin.begin() as c:
            c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def pin_replica(page, url: str, replica: int) -> None:
    """Pin a browser context to replica 1 or 2 as deploy/nginx.conf's sticky cookie does (nginx's first answer
    would give it one at random)."""
    page.context.add_cookies([{"name": "bm_replica", "value": f"bm_replica_{replica}", "url": url}])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppServer:
    url: str
    proc: subprocess.Popen
    log: Path


@contextmanager
def app_server(database: Path | str, log: Path, port: int | None = None, start_timeout: float = 120,
               extra_args: tuple = (), env_extra: dict | None = None,
               users: dict | None = USERS, launcher: Path | None = None) -> Iterator[AppServer]:
    """``streamlit run app.py`` headless on loopback with its own database (an SQLite file, or a URL such as a
    shared PostgreSQL; ``users``: the accounts it gets; None: none, as on a fresh install); stopped (with its
    children) on exit. ``launcher``: a script run as ``launcher PORT`` instead (deploy/replica.sh, what systemd
    runs), with ``PYTHON`` set to this interpreter.

    File watching is off: a test or benchmark server must not react to edits made while it runs.
    """
    port = port or free_port()
    if users:
        add_users(database, users)
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHON=sys.executable, **(env_extra or {}))
    env["BM_DATABASE_URL"] = db_url(database)
    url = f"http://127.0.0.1:{port}"
    cmd = [str(launcher), str(port)] if launcher else \
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
         *extra_args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("streamlit did not start: " + log.read_text()[-2000:]) from None
                time.sleep(0.5)
        yield AppServer(url, proc, log)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it was started in its own session), SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def launch(pw):
    """Headless chromium from a ``sync_playwright()`` instance."""
    return pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)


def new_page(browser, timeout_s: float, **context_options):
    """A page in a fresh browser context (its own cookies, so its own Streamlit session); every wait ``timeout_s``."""
    from playwright.sync_api import expect

    page = browser.new_context(viewport=VIEWPORT, **context_options).new_page()
    page.set_default_timeout(timeout_s * 1000)
    expect.set_options(timeout=timeout_s * 1000)
    return page


def wait_idle(page) -> None:
    """Until the script run in progress (if any) has finished."""
    page.locator(IDLE).wait_for(state="attached")


def sign_in(page, user: str = "tech", password: str | None = None) -> None:
    """Fill the sign-in form shown on the page (one of ``USERS`` unless a password is given) and wait until the
    app shows who is signed in."""
    from playwright.sync_api import expect

    page.get_by_role("textbox", name="User name").fill(user)
    page.get_by_role("textbox", name="Password").fill(password or USERS[user][1])
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_text("Signed in as")).to_be_visible()
    wait_idle(page)


def goto(page, url: str, user: str = "tech") -> None:
    """Open ``url`` in this browser session, signing in as ``user`` when the app asks (a new or reloaded tab)."""
    page.goto(url)
    reload_signed_in(page, user)


def reload_signed_in(page, user: str = "tech", password: str | None = None) -> None:
    """After a navigation or reload: sign in again if the app asks (the sign-in lives in the tab's session)."""
    from playwright.sync_api import expect

    signed, form = page.get_by_text("Signed in as"), page.get_by_role("button", name="Sign in", exact=True)
    expect(signed.or_(form).first).to_be_visible()
    if not signed.is_visible():
        sign_in(page, user, password)
    wait_idle(page)


def open_classify(page, url: str, case_code: str, user: str = "tech") -> None:
    """Open the app (signed in as ``user``), go to Classify and enter the case id."""
    goto(page, url, user)
    page.get_by_role("link", name="Classify").first.click()
    box = page.get_by_role("textbox", name="Case id")
    box.fill(case_code)
    box.press("Enter")
    settle(page)  # the rerun Enter starts: an upload chosen while it redraws the page could be lost


# The long waits (an upload, a background classification) poll the page with a light script: Playwright's role and
# text engines walk the whole page on each poll (about 75 ms a poll with a 100-cell case on screen: 0.53 s of
# Playwright and DOM work in a browser CPU profile of a 3.9 s wait, ~7 polls), and eight browsers polling for half a minute took the two cores the server needed.
POLL_MS = 100
_CLASSIFY_LIVE = """() => [...document.querySelectorAll('button[data-testid="stBaseButton-primary"]')]
    .some(b => b.textContent.trim() === 'Classify' && !b.disabled)"""
_TEXT_SHOWN = """(text) => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
    .some(e => e.textContent.includes(text) && e.checkVisibility())"""


def upload(page, files: list) -> None:
    """Choose the crops in the uploader; returns once they are on the server and the Classify button is live."""
    page.locator('input[type="file"]').set_input_files([str(f) for f in files])
    page.wait_for_function(_CLASSIFY_LIVE, polling=POLL_MS)  # set by the upload's own rerun
    wait_idle(page)


def classify(page, case_code: str) -> dict[str, str]:
    """Press Classify; returns the case's metrics (label -> value) once its results page has been drawn."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Classify", exact=True).click()
    expect(page.get_by_text(f"Case {case_code}", exact=True)).to_be_visible()
    wait_classified(page)
    return metrics(page)


def wait_classified(page) -> None:
    """Until the case's background classification has finished and the page has redrawn the complete case."""
    # the caption drawn by the run after the job
    page.wait_for_function(_TEXT_SHOWN, arg="Classification complete: all", polling=POLL_MS)
    wait_idle(page)


def choose(page, label: str, option_text: str) -> None:
    """Pick ``option_text`` (typed as a filter, first match) in the selectbox labelled ``label``."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    page.keyboard.type(option_text)
    page.get_by_role("option").filter(has_text=option_text).first.click()
    settle(page)


def selectbox_text(page, label: str) -> str:
    """The text a selectbox shows for its current choice."""
    return page.get_by_role("combobox", name=label, exact=True).input_value().strip()


def open_case(page, url: str, case_code: str, user: str = "tech") -> None:
    """A fresh session (signed in as ``user``) opening an existing case through the sidebar's Active case picker."""
    goto(page, url, user)
    choose(page, "Active case", case_code)


GALLERY_TODO = re.compile(r" · \d+ to confirm$")


def classified_case(database: Path | str, code: str, crops: list[Path], user: str = "tech") -> int:
    """A case of real crops classified in-process by the bundled default model (as a job would: same predictor,
    same rows), stored in ``database`` under ``user``; returns its id. For review tests and benchmarks, which
    need a classified case, not the upload."""
    from bmcore.bundle import find_bundles, pick_default
    from bmcore.cases import CaseStore, cell_inputs
    from bmcore.inputs import from_paths
    from bmcore.predictor import Predictor

    pred = Predictor(pick_default(find_bundles(REPO / "assets" / "models")))
    items = from_paths(crops)
    store = CaseStore(db_url(database))
    who = store.authenticate(user, USERS[user][1])
    cid = store.create_case(code, cell_inputs(items, pred.predict_items(items, thumbnails=True)), actor=who,
                            model_name=pred.bundle.name, model_sha256=pred.bundle.sha256, model_classes=pred.classes,
                            rules=pred.rules.to_dict(), inference=pred.inference_record())
    store.engine.dispose()
    return cid


def gallery_open(page, group: str) -> None:
    """Open a class in the review gallery (its pill)."""
    page.get_by_role("radio", name=re.compile(rf"^{re.escape(group)} \d+")).click()
    settle(page)


def gallery_tick(page, position: int) -> None:
    """Tick the cell #position on the gallery page shown."""
    # "#12 0.87" for a classified cell, "#12" alone for an image the gate refused (no model confidence shown)
    _tiles(page).filter(has_text=re.compile(rf"#{position}(?!\d)")).get_by_role("button").click()


def _tiles(page):
    """The gallery's cell toggles (one-option pills labelled "#12 0.87", "⚑ #3", ...)."""
    return page.get_by_test_id("stButtonGroup").filter(has_text=re.compile(r"#\d+"))


def gallery_move(page, code: str) -> float:
    """Move the ticked cells to ``code`` (its quick button); returns the seconds from the click to the page redrawn."""
    t = time.perf_counter()
    page.get_by_role("button", name=f"→ {code}").click()
    settle(page)
    return time.perf_counter() - t


def gallery_move_by_key(page, code: str) -> None:
    """Move the ticked cells to ``code`` with its key (1-9, as the button shows it), the focus still on the last
    cell ticked, as a reviewer at the keyboard would."""
    button = page.get_by_role("button", name=re.compile(rf"^→ {code}\b"))
    key = re.search(r"(\d)\s*$", button.inner_text()).group(1)
    page.keyboard.press(key)
    settle(page)


NOT_JUDGED = re.compile(r"^Not judged by the gate \d+")


def gallery_dismiss_rejected(page) -> int:
    """In the review gallery, dismiss as not cells every image the gate would not judge (each page of its group:
    tick all, "Dismiss the ticked images"); returns how many were dismissed."""
    n = 0
    while page.get_by_role("radio", name=NOT_JUDGED).count():
        page.get_by_role("radio", name=NOT_JUDGED).click()
        settle(page)
        boxes = _tiles(page)
        k = boxes.count()
        for i in range(k):
            boxes.nth(i).get_by_role("button").click()
        page.get_by_role("button", name="Dismiss the ticked images: not cells").click()
        settle(page)
        n += k
    return n


def sign_off(page, password: str | None, *, specimen_id: str | None = None, under_target: bool = True) -> None:
    """Fill the Review page's sign-off box and press Sign off case: the password (None: an identity-provider sign-in,
    no box), a specimen id typed there (or, if None and the case has none, "sign without one" ticked), and "under
    the target count" ticked when the page asks (one form: all reach the server with the click). Each entry is
    checked on the page before the click, and ticking is idempotent: a second call after a refusal keeps them."""
    from playwright.sync_api import expect

    wait_idle(page)  # a form filled while the page still redraws can be drawn again empty
    if password is not None:
        box = page.get_by_label(re.compile("Your password, to sign as"))
        box.fill(password)
        expect(box).to_have_value(password)
    spec = page.get_by_label(re.compile(r"^Specimen / accession no\. \(none entered"))
    if spec.count():
        if specimen_id:
            spec.fill(specimen_id)
            expect(spec).to_have_value(specimen_id)
        else:
            _tick(page, re.compile(r"^Sign without a specimen"))  # no "/" in a role-name pattern: Playwright fails
    if under_target:
        _tick(page, re.compile(r"^Sign with \d+ of \d+ cells counted, under the target count"))
    page.get_by_role("button", name="Sign off case").click()
    settle(page)


def _tick(page, label) -> None:
    """Tick a Streamlit checkbox by its label, if the page shows it and it is not ticked yet (in a form: no rerun)."""
    from playwright.sync_api import expect

    box = page.get_by_role("checkbox", name=label)
    if box.count() and not box.is_checked():
        page.get_by_test_id("stCheckbox").filter(has_text=label).locator("label").click()
        expect(box).to_be_checked()


def resume_with_same_files(page, files: list) -> None:
    """On a partial case's Classify page: upload the same files again and press Resume classification, then wait
    for the complete table."""
    from playwright.sync_api import expect

    page.locator('[data-testid="stFileUploader"]').filter(has_text="The same files again") \
        .locator('input[type="file"]').set_input_files([str(f) for f in files])
    expect(page.get_by_role("button", name="Resume classification")).to_be_enabled()
    wait_idle(page)
    page.get_by_role("button", name="Resume classification").click()
    wait_classified(page)


def relabel_then_stale(a, b, no: int, first: str, second: str, who: str) -> None:
    """Reviewer ``a`` relabels cell #``no`` as ``first`` on the One cell view; ``b``, whose screen still shows the
    cell as it was, saves ``second`` and is refused with the colleague (``who``) and the label now named."""
    from playwright.sync_api import expect

    choose(a, "Label", first)
    a.get_by_role("button", name="Save label").click()
    expect(a.get_by_text(f"#{no} set to {first}")).to_be_visible()
    choose(b, "Label", second)
    b.get_by_role("button", name="Save label").click()
    settle(b)
    expect(b.get_by_text(re.compile(rf"Not saved: .*changed by {who}.*now {first}"))).to_be_visible()


def review_mode(page, mode: str) -> None:
    """Switch the Review page between "Gallery by class" and "One cell"."""
    page.get_by_role("radio", name=mode, exact=True).click()  # a segmented control's options are radios
    settle(page)


def settle(page) -> None:
    """After a click: wait for the rerun it starts to begin (Streamlit flips the marker a moment later), then to end."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.locator('[data-testid="stApp"][data-test-script-state="running"]').wait_for(state="attached",
                                                                                        timeout=1500)
    except PlaywrightTimeout:
        pass  # it ran and ended already, or the click started none
    wait_idle(page)


def gallery_confirm_everything(page, max_actions: int = 400) -> list[float]:
    """In the review gallery, open each class that still has cells to confirm and confirm its page as drawn, until
    none is left (checked twice, on a settled page); returns the seconds each confirmation took (click to the page
    redrawn)."""
    times = []
    while len(times) < max_actions:
        settle(page)
        todo = page.get_by_role("radio", name=GALLERY_TODO)  # the class pills
        if todo.count() == 0:
            settle(page)
            if page.get_by_role("radio", name=GALLERY_TODO).count() == 0:
                return times
            continue
        todo.first.click()
        settle(page)
        t = time.perf_counter()
        page.get_by_role("button", name=re.compile("^Confirm this page")).click()
        settle(page)
        times.append(time.perf_counter() - t)
    raise RuntimeError("the gallery still has cells to confirm")


def metrics(page) -> dict[str, str]:
    out = {}
    for m in page.get_by_test_id("stMetric").all():
        label = m.get_by_test_id("stMetricLabel").inner_text().strip()
        out[label] = m.get_by_test_id("stMetricValue").inner_text().strip()
    return out


def _heatmap_row(page, file_name: str = ""):
    """The row holding a cell's crop (captioned "<file> as the model sees it") and its heatmap."""
    caption = page.get_by_text(f"{file_name} as the model sees it".strip())
    return page.get_by_test_id("stHorizontalBlock").filter(has=caption).last


def open_cell_view(page) -> None:
    """Switch to the Cell view tab and wait for the heatmap of the cell it opens with."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Cell view").click()
    expect(page.get_by_text("as the model sees it").first).to_be_visible()
    _wait_images(_heatmap_row(page))


def show_heatmap(page, file_name: str) -> float | None:
    """Pick a cell by its file name in the Cell view tab and wait until its crop and heatmap are on screen.

    Returns the seconds from choosing the cell to the heatmap shown, or None (list closed again) when the cell
    is not offered, e.g. the model's gate rejected it. The list filters fuzzily: only an exact name counts.
    """
    from playwright.sync_api import expect

    box = page.get_by_role("combobox", name="Cell", exact=True)
    box.click()
    page.keyboard.type(file_name)
    expect(box).to_have_value(file_name)
    option = page.get_by_role("option", name=re.compile(re.escape(file_name)))
    expect(page.get_by_role("option").first).to_be_visible()  # the filtered list, or its "No results" entry
    if option.count() == 0:
        page.keyboard.press("Escape")
        return None
    t = time.perf_counter()
    option.first.click()
    row = _heatmap_row(page, file_name)
    expect(row).to_be_visible()
    wait_idle(page)
    _wait_images(row)
    return time.perf_counter() - t


def _wait_images(row) -> None:
    """The crop and its heatmap (the row's images) present and decoded by the browser."""
    imgs = row.locator("img")
    imgs.nth(1).wait_for(state="visible")
    for img in imgs.all():
        img.evaluate("img => img.complete && img.naturalWidth > 0 ? true : "
                     "new Promise((ok, no) => { img.onload = () => ok(true); img.onerror = no; })")
