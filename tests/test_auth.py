"""Accounts, roles and sign-in: hashing, lockout, the store's own role checks, signatures, the migration of an older
database, the users CLI, identity-provider accounts, and what each role sees in the app (AppTest)."""

import datetime as dt
import logging
import sqlite3
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from bmcore import auth
from bmcore.auth import AuthPolicy
from bmcore.cases import AuthError, CaseError, CaseStore, CellInput, PermissionDenied, utcnow
from tests.conftest import REPO, TEST_PASSWORD, actor

FIXTURE = REPO / "tests" / "fixtures" / "store_before_accounts.sql"


def _cells(n=3):
    return [CellInput(f"c{i}.jpg", True, predicted="LYT", confidence=0.95, probabilities={"LYT": 0.95, "BLA": 0.05})
            for i in range(n)]


@pytest.fixture
def store(tmp_path):
    return CaseStore(f"sqlite:///{tmp_path / 'cases.db'}", policy=AuthPolicy(max_failures=3, lock_minutes=10,
                                                                               slow_seconds=0.0))


@pytest.fixture
def sleeps(monkeypatch):
    """The pauses a failed sign-in asks for (recorded, not slept)."""
    got = []
    monkeypatch.setattr(auth.time, "sleep", got.append)
    return got


def test_passwords_are_argon2id_hashes_never_the_password(store):
    store.add_user("amy", "pathologist", "correct horse battery")
    with store.engine.connect() as c:
        stored = c.exec_driver_sql("SELECT password_hash FROM users WHERE username = 'amy'").scalar()
    assert stored.startswith("$argon2id$") and "correct horse battery" not in stored
    assert auth.verify_password(stored, "correct horse battery") and not auth.verify_password(stored, "Correct horse battery")
    assert store.authenticate("amy", "correct horse battery").role == "pathologist"
    with pytest.raises(CaseError, match="at least 10"):
        store.add_user("bob", "viewer", "short")
    with pytest.raises(CaseError, match="already exists"):
        store.add_user("amy", "viewer", "another password")
    with pytest.raises(CaseError, match="unknown role"):
        store.add_user("cat", "superuser", "a long password")


def test_failed_sign_ins_are_slowed_and_throttled_per_client_and_logged_without_what_was_typed(store, sleeps, caplog):
    policy = AuthPolicy(slow_seconds=0.5)
    assert [policy.pause(n) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]  # doubling, at most 4 s
    store.policy = AuthPolicy(max_failures=3, lock_minutes=10, slow_seconds=0.25, client_max_failures=5)
    store.add_user("amy", "technologist", "the right password")
    caplog.set_level(logging.INFO, logger="bmcore.auth")
    one_message = "wrong user name or password, or too many failed sign-ins from here"
    attacker, owner = "203.0.113.66", "10.0.0.7"
    for i in range(3):
        with pytest.raises(AuthError, match=one_message):
            store.authenticate("amy", f"guess number {i}", client=attacker)
    assert sleeps == [0.25, 0.5, 1.0]
    # the attacker's client is refused now, even with the right password, and in the same words
    with pytest.raises(AuthError, match=one_message):
        store.authenticate("amy", "the right password", client=attacker)
    # ... but the owner, from another client, is not shut out, and signing in does not clear the attacker's count
    assert store.authenticate("amy", "the right password", client=owner).username == "amy"
    with pytest.raises(AuthError, match=one_message):
        store.authenticate("amy", "the right password", client=attacker)
    # an unknown name: the same answer on the same schedule as a real one
    sleeps.clear()
    for i in range(3):
        with pytest.raises(AuthError, match=one_message):
            store.authenticate("nobody-here", f"guess number {i}", client="198.51.100.8")
    with pytest.raises(AuthError, match=one_message):
        store.authenticate("nobody-here", "anything at all", client="198.51.100.8")
    assert sleeps == [0.25, 0.5, 1.0, 2.0]
    # one client trying many names is refused after client_max_failures, whatever the name
    for i in range(5):
        with pytest.raises(AuthError):
            store.authenticate(f"name{i}", "guess", client="198.51.100.9")
    with pytest.raises(AuthError, match=one_message):
        store.authenticate("amy", "the right password", client="198.51.100.9")
    events = store.login_events()
    logged = caplog.text + repr(events)
    assert not [t for t in ["guess number", "the right password", "nobody-here", "name3", "anything"] if t in logged]
    assert "amy" in logged  # a successful sign-in names its account
    assert {e["event"] for e in events} == {"failed-sign-in", "refused-sign-in", "ok-sign-in", "account-created"}
    assert all(e["user"].startswith("name#") for e in events if e["event"] != "ok-sign-in"
               and e["event"] != "account-created")
    with store.engine.begin() as c:  # the window runs out
        c.exec_driver_sql("UPDATE login_events SET at = :t", {"t": utcnow() - dt.timedelta(minutes=11)})
    assert store.authenticate("amy", "the right password", client=attacker).username == "amy"
    for i in range(3):
        with pytest.raises(AuthError):
            store.authenticate("amy", "wrong again", client=attacker)
    store.update_user("amy", password="a brand new password")  # an admin's reset restarts the count
    assert store.authenticate("amy", "a brand new password", client=attacker)


def test_the_store_enforces_roles_whatever_a_page_shows(store):
    tech, viewer = actor(store, "tess", "technologist"), actor(store, "vic", "viewer")
    path, admin = actor(store, "pat", "pathologist"), actor(store, "ada", "admin")
    with pytest.raises(PermissionDenied, match="classifying crops needs the technologist role; vic is a viewer"):
        store.create_case("V-1", _cells(), actor=viewer)
    cid = store.create_case("T-1", _cells(), actor=tech)
    cells = store.get_case(cid).cells
    with pytest.raises(PermissionDenied, match="reviewing cells needs the technologist role"):
        store.review_cell(cells[0].id, viewer, "BLA")
    with pytest.raises(PermissionDenied, match="needs a signed-in user"):
        store.review_cell(cells[0].id, "Dr Typed", "BLA")
    store.review_cell(cells[0].id, tech, "BLA")
    store.review_cells(cid, tech, {c.id: c.version for c in store.get_case(cid).cells})
    with pytest.raises(PermissionDenied, match="signing a case off needs the pathologist role; tess is a technologist"):
        store.sign_off(cid, tech, password=TEST_PASSWORD, no_specimen_id=True, under_target=True)  # the right password does not make a technologist sign
    with pytest.raises(AuthError, match="enter your password"):
        store.sign_off(cid, path, no_specimen_id=True, under_target=True)
    with pytest.raises(AuthError, match="wrong user name or password"):
        store.sign_off(cid, path, password="not the password", no_specimen_id=True, under_target=True)
    assert store.get_case(cid).status == "open"
    sig = store.sign_off(cid, path, password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    case = store.get_case(cid)
    assert case.status == "signed" and case.signed_by_id == path.user_id and case.signature == sig
    assert sig["user_id"] == path.user_id and sig["role"] == "pathologist" and sig["case_version"] == case.version
    assert sig["model_sha256"] == case.model_sha256 and sig["proof"] == "password re-entered" and sig["cells"] == 3
    audit = store.audit(cid)
    assert audit[-1]["action"] == "sign-off" and audit[-1]["user_id"] == path.user_id and "pat" in audit[-1]["note"]
    assert {e["user_id"] for e in audit} == {tech.user_id, path.user_id}
    with pytest.raises(PermissionDenied, match="reopening a signed case needs the pathologist role"):
        store.reopen(cid, tech, "recount")
    store.reopen(cid, path, "recount")
    with pytest.raises(PermissionDenied, match="deleting a case needs the admin role"):
        store.delete_case(cid, path)
    # the role is read from the users table at each change: a downgrade applies to an Actor already held
    store.update_user("pat", role="technologist", by=admin)
    with pytest.raises(PermissionDenied, match="pat is a technologist"):
        store.sign_off(cid, path, password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    store.update_user("tess", disabled=True, by=admin)
    with pytest.raises(PermissionDenied, match="disabled"):
        store.review_cell(cells[1].id, tech, "EOS")
    with pytest.raises(AuthError, match="disabled"):
        store.refresh_actor(tech)
    with pytest.raises(PermissionDenied, match="managing user accounts needs the admin role"):
        store.add_user("eve", "admin", "a long password", by=path)
    with pytest.raises(CaseError, match="cannot disable yourself"):
        store.update_user("ada", disabled=True, by=admin)
    store.delete_case(cid, admin)
    assert store.list_cases() == [] and store.login_events()[0]["event"] == "case-deleted"


def test_a_creator_may_take_back_only_an_untouched_case(store):
    tech, other = actor(store, "tess", "technologist"), actor(store, "tom", "technologist")
    pending = [CellInput(f"p{i}.jpg", True, pending=True) for i in range(2)]
    cid = store.create_case("P-1", pending, actor=tech)
    with pytest.raises(PermissionDenied):
        store.delete_case(cid, other)  # not theirs
    store.delete_case(cid, tech)  # a submission that failed: nothing was classified
    cid = store.create_case("P-2", pending, actor=tech)
    store.save_results(cid, {0: CellInput("", True, predicted="LYT", confidence=0.9)})
    with pytest.raises(PermissionDenied, match="admin"):
        store.delete_case(cid, tech)


def test_an_old_database_keeps_its_history_with_typed_names_marked(tmp_path):
    """A copy of a database written before accounts (typed reviewer names): migrated in place on open."""
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(FIXTURE.read_text())
    con.close()
    store = CaseStore(f"sqlite:///{db}")
    assert not store.has_users()
    old = store.audit(store.case_id("OLD-1"))
    assert [e["who"] for e in old] == ["Dr Typed (typed name, not verified)"] * 2 + \
        ["Tech Typed (typed name, not verified)"] * 3 + ["Dr Typed (typed name, not verified)"]
    assert all(e["user_id"] is None for e in old)
    assert [e["who"] for e in store.audit(store.case_id("OLD-2"))][-1] == "(classifier)"  # the system's, not typed
    case = store.get_case(store.case_id("OLD-1"))
    from bmcore.casetext import reviewer_text
    from bmcore.report import case_rows, render_html_report

    assert case.status == "signed" and case.signature is None
    assert reviewer_text(case.cells[0]) == "Dr Typed (typed name, not verified)"
    html = render_html_report(case, {}, store.audit(case.id))
    assert "Signed off by Dr Typed (typed name, not verified)" in html
    assert case_rows(case)[0]["reviewed_by"] == "Dr Typed (typed name, not verified)"
    # the old case goes on under accounts: reopened, re-reviewed and signed by authenticated users
    path = actor(store, "pat", "pathologist")
    store.reopen(case.id, path, "re-signed under accounts")
    store.review_cell(case.cells[0].id, path, "LYT")
    store.sign_off(case.id, path, password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    new = store.audit(case.id)
    assert [e["who"] for e in new[-3:]] == ["pat"] * 3 and {e["user_id"] for e in new[-3:]} == {path.user_id}
    assert new[0]["who"] == "Dr Typed (typed name, not verified)"  # history kept as it was
    html = render_html_report(store.get_case(case.id), {}, store.audit(case.id))
    assert "<h2>Signature</h2>" in html and f"user pat, id {path.user_id}, pathologist" in html
    assert store.integrity_ok()
    CaseStore(f"sqlite:///{db}")  # opening it again changes nothing more
    assert store.audit(store.case_id("OLD-2"))[-1]["who"] == "(classifier)"


def test_users_command_line(tmp_path):
    db = tmp_path / "u.db"

    def run(*args, pw=None):
        return subprocess.run([sys.executable, "-m", "bmcore", "users", *args, "--db", str(db)], cwd=REPO,
                              capture_output=True, text=True, input=None if pw is None else pw + "\n", timeout=120)

    assert "create the first admin" in run("list").stdout
    r = run("add", "ada", "--role", "admin", "--display-name", "Ada Admin", "--password-stdin", pw="ada's password!")
    assert r.returncode == 0, r.stderr
    assert run("add", "ada", "--role", "viewer", "--password-stdin", pw="whatever password").returncode == 1
    assert "at least 10" in run("add", "bob", "--role", "viewer", "--password-stdin", pw="short").stderr
    run("add", "bob", "--role", "technologist", "--password-stdin", pw="bob's password!")
    out = run("list").stdout
    assert "ada\tadmin\tlocal\tactive" in out and "bob\ttechnologist\tlocal\tactive" in out
    assert run("role", "bob", "--role", "pathologist").returncode == 0
    assert run("disable", "bob").returncode == 0 and "bob\tpathologist\tlocal\tdisabled" in run("list").stdout
    store = CaseStore(str(db))
    with pytest.raises(AuthError, match="disabled"):
        store.authenticate("bob", "bob's password!")
    run("enable", "bob")
    assert run("reset", "bob", "--password-stdin", pw="bob's new password").returncode == 0
    assert store.authenticate("bob", "bob's new password").role == "pathologist"
    assert "ada's password" not in db.read_bytes().decode("latin-1")


def test_identity_provider_accounts_take_their_role_from_a_claim(store):
    roles = {"bm-path": "pathologist", "bm-tech": "technologist", "bm-admin": "admin"}
    now = int(utcnow().replace(tzinfo=dt.timezone.utc).timestamp())
    claims = {"iss": "http://idp", "sub": "u-1", "preferred_username": "alice", "name": "Alice Smith",
              "groups": ["staff", "bm-tech"], "iat": now}
    a = store.oidc_sign_in(claims, role_map=roles)
    assert (a.username, a.display_name, a.role, a.method) == ("alice", "Alice Smith", "technologist", "oidc")
    a = store.oidc_sign_in(dict(claims, groups=["bm-tech", "bm-path"]), role_map=roles)  # the highest wins
    assert a.role == "pathologist" and store.list_users()[0]["source"] == "oidc"
    with pytest.raises(PermissionDenied, match="no role in this app"):
        store.oidc_sign_in(dict(claims, groups=["staff"]), role_map=roles)
    with pytest.raises(AuthError, match="wrong user name or password"):  # no password here for such an account
        store.authenticate("alice", "")
    # a signature needs a fresh identity-provider sign-in
    cid = store.create_case("O-1", _cells(), actor=a)
    store.review_cells(cid, a, {c.id: c.version for c in store.get_case(cid).cells})
    stale = store.oidc_sign_in(dict(claims, groups=["bm-path"], iat=now - 3600), role_map=roles)
    with pytest.raises(AuthError, match="sign in again with your identity provider"):
        store.sign_off(cid, stale, no_specimen_id=True, under_target=True)
    sig = store.sign_off(cid, store.oidc_sign_in(dict(claims, groups=["bm-path"]), role_map=roles), no_specimen_id=True, under_target=True)
    assert sig["proof"].startswith("identity provider sign-in at") and sig["username"] == "alice"
    # an old identity cookie for an account idle as long is refused
    with store.engine.begin() as c:
        c.exec_driver_sql("UPDATE users SET last_seen_at = :t", {"t": utcnow() - dt.timedelta(hours=2)})
    with pytest.raises(AuthError, match="expired"):
        store.oidc_sign_in(dict(claims, groups=["bm-path"], iat=now - 7200), role_map=roles, idle_minutes=30)
    store.update_user("alice", disabled=True)
    with pytest.raises(AuthError, match="disabled"):
        store.oidc_sign_in(dict(claims, groups=["bm-path"]), role_map=roles)
    with pytest.raises(CaseError, match="no password here"):
        store.update_user("alice", password="a new long password")


# -- what each role sees (AppTest) ---------------------------------------------------------------------------

PAGES = ["views/home.py", "views/classify.py", "views/hairy_cells.py", "views/differential.py", "views/review.py",
         "views/export.py", "views/model_comparison.py", "views/model_card.py", "views/users.py"]


@pytest.fixture
def app_env(env):
    from bmcore.bundle import load_bundle

    return dict(env, store=CaseStore(env["db"]), bundle=load_bundle(env["eight"]))


def _app(env, who=None, page=None, **state) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state["bundle"] = str(env["bundle"].path)
    if who is not None:
        at.session_state["actor"] = who
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _text(at) -> str:
    parts = []
    for kind in ("markdown", "caption", "title", "subheader", "header", "info", "warning", "error", "success",
                 "text", "code", "metric"):
        for el in getattr(at, kind):
            parts.append(str(getattr(el, "value", "")) + str(getattr(el, "label", "")))
    for el in at.selectbox:
        parts += [str(o) for o in el.options]
    parts += [str(df.value.to_dict()) for df in at.dataframe]
    return "\n".join(parts)


def _signed_case(env):
    store = env["store"]
    tech = actor(store, "tess", "technologist")
    meta = env["bundle"]
    cid = store.create_case("SECRET-CASE-42", _cells(4), actor=tech, model_name=meta.name, model_sha256=meta.sha256,
                            model_classes=list(meta.classes))
    return cid


def test_the_first_admin_is_made_in_the_browser_with_the_servers_one_time_link(app_env, capsys, caplog):
    """An empty store: the server prints a setup link once on its console; the page asks for its token; a wrong token
    makes nothing; the right one makes an admin who is signed in at once; the token works once and is refused once
    any account exists; it is logged nowhere but that console line."""
    import re as _re

    from bmcore.auth import SetupToken

    caplog.set_level(logging.DEBUG)
    env, store = app_env, app_env["store"]
    at = _app(env)
    printed = capsys.readouterr().out
    links = _re.findall(r"http://\S+/\?setup=(\S+)", printed)
    assert len(links) == 1, printed
    token = links[0]

    def submit(at, tok, name="root", pw="a long admin password", pw2=None):
        at.text_input(key="setup_token").set_value(tok)
        at.text_input(key="setup_user").set_value(name)
        at.text_input(key="setup_display").set_value("Dr Root")
        at.text_input(key="setup_pw1").set_value(pw)
        at.text_input(key="setup_pw2").set_value(pw if pw2 is None else pw2)
        next(b for b in at.button if b.label == "Create the admin and sign in").click().run()
        assert not at.exception, at.exception

    submit(at, "not-the-token")
    assert any("setup link is not valid" in e.value for e in at.error) and not store.has_users()
    submit(at, token, pw2="another long password")
    assert any("the two passwords differ" in e.value for e in at.error) and not store.has_users()
    submit(at, token)
    assert at.session_state["actor"].role == "admin" and store.list_users()[0]["username"] == "root"
    assert any("Signed in as **Dr Root (root)** · admin" in m.value for m in at.sidebar.markdown)
    other = _app(env)  # a second browser: the store has an account, so it gets the sign-in form, no setup form
    assert [b.label for b in other.button] == ["Sign in"]
    tok = SetupToken()
    store2_user = store.list_users()
    with pytest.raises(AuthError, match="exists already"):  # a fresh token is refused once any account exists
        store.add_first_admin("eve", "another long password", setup=tok, token=tok.token)
    assert store.list_users() == store2_user
    tok.use()
    with pytest.raises(AuthError, match="not valid"):  # a spent token is refused
        store.add_first_admin("eve", "another long password", setup=tok, token=tok.token)
    logged = caplog.text + repr(store.login_events())
    assert token not in logged and "a long admin password" not in logged
    assert capsys.readouterr().out.count(token) == 0, "printed once, at its first use"


def test_no_page_shows_anything_before_sign_in_and_an_empty_store_says_how_to_start(app_env):
    env = app_env
    at = _app(env)
    assert any("No user accounts exist yet" in m.value for m in at.markdown)
    # nothing but the first-admin form opens, and only with the server's token
    assert [b.label for b in at.button] == ["Create the admin and sign in"] and not at.sidebar.selectbox
    cid = _signed_case(env)
    for page in PAGES:
        at = _app(env, page=page, case_id=cid)
        text = _text(at)
        assert "SECRET-CASE-42" not in text and "c0.jpg" not in text, page
        assert [b.label for b in at.button] == ["Sign in"], page
        assert {t.label for t in at.text_input} == {"User name", "Password"}, page
        assert not at.sidebar.selectbox and not at.dataframe, page


def test_the_sign_in_form_and_sign_out(app_env):
    env = app_env
    store = env["store"]
    store.add_user("pat", "pathologist", "pat's long password", display_name="Dr Pat")
    at = _app(env)
    at.text_input(key="login_user").set_value("pat")
    at.text_input(key="login_password").set_value("a wrong password")
    at.button[0].click().run()
    assert any("wrong user name or password" in e.value for e in at.error) and "actor" not in at.session_state
    assert at.text_input(key="login_password").value == "", "a tried password is not kept in the session"
    at.text_input(key="login_user").set_value("pat")
    at.text_input(key="login_password").set_value("pat's long password")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.session_state["actor"].username == "pat"
    assert any("Signed in as **Dr Pat (pat)** · pathologist" in m.value for m in at.sidebar.markdown)
    assert at.session_state["login_password"] == ""
    at.sidebar.button(key="sign_out").click().run()
    assert "actor" not in at.session_state and [b.label for b in at.button] == ["Sign in"]
    assert any("signed out" in i.value for i in at.info)
    assert [e["event"] for e in store.login_events()[:3]] == ["sign-out", "ok-sign-in", "failed-sign-in"]


def test_an_idle_session_is_signed_out(app_env):
    env = app_env
    who = actor(env["store"], "pat", "pathologist")
    at = _app(env, who, active_at=utcnow() - dt.timedelta(minutes=31))
    assert "actor" not in at.session_state and any("30 minutes without activity" in i.value for i in at.info)
    assert env["store"].login_events()[0]["detail"] == "idle for more than 30 minutes"


def test_what_each_role_sees(app_env):
    env = app_env
    store = env["store"]
    cid = _signed_case(env)
    tech = actor(store, "tess", "technologist")
    # viewer: reads everything, changes nothing
    viewer = actor(store, "vic", "viewer")
    at = _app(env, viewer, "views/classify.py", case_id=cid)
    assert not at.get("file_uploader") and any("viewer" in i.value for i in at.info)
    assert "SECRET-CASE-42" in _text(at)
    at.switch_page("views/review.py").run()
    assert any("can read this case" in i.value for i in at.info)
    assert not [b for b in at.button if b.key in ("confirm_btn", "save_btn", "gal_undo", "sign_off", "reopen")
                or b.label.startswith(("Confirm this page", "→"))] and not at.checkbox
    for page in ("views/model_comparison.py", "views/model_card.py", "views/export.py", "views/differential.py"):
        at.switch_page(page).run()
        assert not at.exception and not at.error, page
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("views/users.py")  # not registered for this role: its address opens nothing
    # technologist: reviews, cannot sign
    at = _app(env, tech, "views/review.py", case_id=cid)
    assert [b for b in at.button if b.label.startswith("Confirm this page")] and at.button(key="sign_off").disabled
    at.button_group(key=f"review_mode_{cid}").set_value("One cell").run()
    assert at.button(key="confirm_btn") and at.button(key="sign_off").disabled
    assert any("Only a pathologist signs off" in c.value for c in at.caption)
    assert not [t for t in at.text_input if t.key == f"sign_pw_{cid}"]
    # pathologist: signs with the password box
    at = _app(env, actor(store, "pat", "pathologist"), "views/review.py", case_id=cid)
    assert not at.button(key="sign_off").disabled and at.text_input(key=f"sign_pw_{cid}")
    # admin: the Users page, where accounts are added
    at = _app(env, actor(store, "ada", "admin"), "views/users.py")
    assert "tess" in _text(at)
    form = at.get("form")
    at.text_input[0].set_value("newbie")
    at.text_input[1].set_value("New Person")
    at.selectbox[0].set_value("viewer")
    at.text_input[2].set_value("newbie password")
    at.text_input[3].set_value("newbie password")
    at.button[0].click().run()
    assert not at.exception and any("Added newbie" in s.value for s in at.success), [e.value for e in at.error]
    assert form is not None and "newbie" in {u["username"] for u in store.list_users()}
    # the Users page exists only for admins (the store refuses account changes by anyone else too)
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        _app(env, tech, "views/users.py")


def test_a_stale_account_form_is_refused_and_does_not_undo_another_admins_change(app_env):
    """Two admins with the same account open on the Users page: B disables it; A, whose form still shows it active,
    gives it another role and saves. A is refused (nothing saved: the account stays disabled, its role unchanged)
    and told what it is now; A's choice stays in A's form; after loading the account as it is, A's change saves."""
    env = app_env
    store = env["store"]
    actor(store, "tess", "technologist")
    admins = {n: actor(store, n, "admin") for n in ("ada", "abe")}
    pages = {}
    for n, who in admins.items():
        at = _app(env, who, "views/users.py")
        at.selectbox(key="users_pick").set_value("tess").run()
        assert not at.exception, at.exception
        pages[n] = at
    a, b = pages["ada"], pages["abe"]
    b.radio(key="account_state").set_value("disabled")
    next(x for x in b.button if x.label == "Save changes").click().run()
    tess = next(u for u in store.list_users() if u["username"] == "tess")
    assert tess["disabled"] and not b.error
    a.selectbox(key="account_role").set_value("pathologist")
    next(x for x in a.button if x.label == "Save changes").click().run()
    assert not a.exception, a.exception
    refusal = " ".join(e.value for e in a.error)
    assert "Not saved" in refusal and "now technologist, disabled" in refusal and "by abe" in refusal, refusal
    tess = next(u for u in store.list_users() if u["username"] == "tess")
    assert tess["disabled"] and tess["role"] == "technologist", "the stale form neither re-enabled nor re-roled it"
    assert a.selectbox(key="account_role").value == "pathologist", "A's choice is kept in A's form"
    assert any("Another admin changed tess" in w.value for w in a.warning)
    next(x for x in a.button if x.label.startswith("Load the account as it is now")).click().run()
    assert a.radio(key="account_state").value == "disabled" and a.selectbox(key="account_role").value == "technologist"
    a.selectbox(key="account_role").set_value("pathologist")
    next(x for x in a.button if x.label == "Save changes").click().run()
    tess = next(u for u in store.list_users() if u["username"] == "tess")
    assert tess["role"] == "pathologist" and tess["disabled"], "A's deliberate change, on top of B's"
    assert any("Saved the changes to tess" in s.value for s in a.success)


def test_a_refused_new_account_keeps_what_the_admin_entered(app_env):
    """"Add a local account" refused (passwords differ) keeps the name and the role chosen: a form that emptied
    itself put the role back to technologist, and an admin retyping only the name and passwords would add a
    pathologist as a technologist. Added, the form is empty again."""
    env = app_env
    store = env["store"]
    at = _app(env, actor(store, "ada", "admin"), "views/users.py")
    at.text_input(key="new_user_name").set_value("drnew")
    at.selectbox(key="new_user_role").set_value("pathologist")
    at.text_input(key="new_user_pw1").set_value("a long password 1")
    at.text_input(key="new_user_pw2").set_value("a long password 2")
    next(b for b in at.button if b.label == "Add account").click().run()
    assert any("Not added: the two passwords differ" in e.value for e in at.error)
    assert at.text_input(key="new_user_name").value == "drnew"
    assert at.selectbox(key="new_user_role").value == "pathologist", "the chosen role is kept"
    at.text_input(key="new_user_pw2").set_value("a long password 1")
    next(b for b in at.button if b.label == "Add account").click().run()
    assert any("Added drnew (pathologist)" in x.value for x in at.success), [e.value for e in at.error]
    assert next(u for u in store.list_users() if u["username"] == "drnew")["role"] == "pathologist"
    assert at.text_input(key="new_user_name").value == "" and at.selectbox(key="new_user_role").value == "technologist"
