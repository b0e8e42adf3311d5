"""Shared pieces of the Streamlit pages: cached model and store, the sidebar, the footer.

The heavy objects are created once per process with ``st.cache_resource`` and shared by all
sessions: the ``Predictor`` is thread-safe (see ``bmcore.predictor``), the ``CaseStore`` opens
a connection per operation. Per-session choices live in ``st.session_state``.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from bmcore import RUO_STATEMENT, caserules
from bmcore.bundle import BundleError, find_bundles, load_bundle, pick_default
from bmcore.auth import Actor, SetupToken
from bmcore.cases import AuthError, CaseError, CaseStore, utcnow
from bmcore.casetext import inference_text, reviewer_text
from bmcore.demo import DEMO_NOTE
from bmcore.schema import JOB_LIVE
from bmcore.jobs import JobRunner
from bmcore.predictor import Predictor
from bmcore.tasks import HAIRY_CELL_CODE, glossary
from bmcore.text import clean, md

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"
MODELS = ASSETS / "models"
# the Classify page's case view: its tabs, and the session-state key of the open one (only its content is drawn)
CASE_TABS = ("Results table", "Gallery", "Review bin", "Not judged by the gate", "Cell view")
CASE_TAB_KEY = "classify_tab"


def _secret(name: str) -> str | None:
    try:
        return st.secrets.get(name)  # type: ignore[no-any-return]
    except Exception:  # no secrets.toml: not an error
        return None


def models_dirs() -> list[Path]:
    """Where installed bundles are: the shipped ones, BM_MODELS_DIR, and the models an admin approved (Model
    updates). A learnt candidate is not among them until it is approved."""
    from bmcore.learnjob import approved_dir

    extra = os.environ.get("BM_MODELS_DIR") or _secret("models_dir")
    return [MODELS] + ([Path(extra)] if extra else []) + [approved_dir()]


def shipped_default() -> Path:
    """The shipped default bundle (marked DEFAULT under assets/models, or BM_MODELS_DIR's): never overwritten."""
    return pick_default(find_bundles(*models_dirs()[:-1]))


def default_bundle_path() -> Path:
    """The model for new cases: the last one an admin approved or restored (Model updates), else the shipped
    default."""
    active = get_store().active_model()
    if active and (Path(active["path"]) / "bundle.json").is_file():
        return Path(active["path"])
    return shipped_default()


def available_bundles() -> list[Path]:
    return find_bundles(*models_dirs())


@st.cache_data(show_spinner=False)
def _bundle_metas(stamps: tuple) -> dict[str, dict]:
    metas = {}
    for path, _ in stamps:
        try:
            metas[path] = load_bundle(path).meta  # verifies the weights' sha256: once per file version
        except BundleError:
            continue
    return metas


def installed_bundles() -> dict[Path, dict]:
    """Verified metadata of every installed bundle, cached by weights file and mtime (no re-hash per rerun)."""
    stamps = []
    for p in available_bundles():
        w = p / "weights.safetensors"
        stamps.append((str(p), w.stat().st_mtime_ns if w.exists() else 0))
    return {Path(k): v for k, v in _bundle_metas(tuple(stamps)).items()}


@st.cache_resource(show_spinner="Loading model…")
def get_predictor(bundle_path: str, engine: str | None = None, precision: str = "auto",
                  tta: bool | None = None) -> Predictor:
    """The process's one Predictor per bundle and inference setting (None, "auto": the bundle's choice; ONNX Runtime
    session inside, shared by every session). Grad-CAM's torch model is built in the background at once, so the first
    heatmap a reviewer opens does not wait for it."""
    import threading

    pred = Predictor(bundle_path, engine=engine, precision=precision, tta=tta)
    threading.Thread(target=pred.warm_explanations, name="bmcore-cam-warmup", daemon=True).start()
    return pred


@st.cache_resource
def _store(url: str) -> CaseStore:
    return CaseStore(url or None)


def _store_url() -> str:
    return os.environ.get("BM_DATABASE_URL") or _secret("database_url") or ""


def get_store() -> CaseStore:
    """The case database: BM_DATABASE_URL, else secrets' database_url, else data/bmcases.db (SQLite)."""
    return _store(_store_url())


@st.cache_resource
def _runner(url: str) -> JobRunner:
    return JobRunner(_store(url))


def get_runner() -> JobRunner:
    """The server process's one classification queue (started on first use; marks a dead server's jobs)."""
    return _runner(_store_url())


def case_bundle_path(case) -> Path | None:
    """The installed bundle that classified ``case`` (matched by the weights' sha256), or None."""
    return bundle_path_of(case.model_sha256)


def bundle_path_of(weights_sha256: str) -> Path | None:
    """The installed bundle whose weights have this sha256, or None."""
    for path, meta in installed_bundles().items():
        if weights_sha256 and meta.get("weights_sha256") == weights_sha256:
            return path
    return None


def case_predictor(case, *, stop: bool = False) -> Predictor | None:
    """The model that classified ``case``, loaded through the shared cache; never another one.

    When it is not installed here, says so (and stops the page if ``stop``) instead of falling back.
    """
    path = case_bundle_path(case)
    if path is None:
        st.warning(f"The model that classified case {md(case.case_code)} ({case.model_name or 'unknown'}, weights sha256 "
                   f"{(case.model_sha256 or '?')[:12]}…) is not installed on this server. Its stored results are "
                   "shown; heatmaps and new classifications of this case need that model, and no other model is "
                   "used in its place.")
        if stop:
            st.stop()
        return None
    inf = case.inference or {}
    if inf.get("engine"):  # resumed the way it began (the bundle's default may have changed since)
        try:
            return get_predictor(str(path), inf["engine"], inf.get("precision", "auto"), inf.get("tta"))
        except BundleError as exc:
            st.warning(f"Case {md(case.case_code)} was classified with {inference_text(case)}, which cannot run here "
                       f"({md(exc)}); its model's default setting is used.")
    return get_predictor(str(path))


# -- identity -----------------------------------------------------------------------------------------------
def oidc_config() -> dict | None:
    """Single sign-on, when secrets.toml has Streamlit's ``[auth]`` section (``st.login``); ``[bm_oidc]`` says which
    claim carries the roles and how its values map to ours. None when not configured."""
    try:
        auth = st.secrets.get("auth")
    except Exception:  # no secrets.toml
        return None
    if not auth:
        return None
    bm = _secret("bm_oidc") or {}
    named = [k for k, v in auth.items() if hasattr(v, "keys")]  # [auth.<provider>] sections
    return {"provider": bm.get("provider") or (named[0] if named else None),
            "label": bm.get("label") or "your identity provider", "role_claim": bm.get("role_claim", "groups"),
            "role_map": {str(k): str(v) for k, v in dict(bm.get("roles") or {}).items()}}


def actor() -> Actor:
    """The signed-in user of this browser session (``login_gate`` has run: there always is one on a page).

    Widget callbacks run before the script, so before ``login_gate``: an idle session's callback gets ``AuthError``
    here (the pages' actions turn it into "Not saved: ..."), and the gate then signs the session out."""
    who = st.session_state["actor"]
    last = st.session_state.get("active_at")
    idle = get_store().policy.idle_minutes
    if last is not None and (utcnow() - last).total_seconds() > idle * 60:
        raise AuthError(f"your session expired after {idle:g} minutes without activity; nothing was saved")
    return who


def _signed_out(message: str, *, oidc: bool) -> None:
    """Forget this session's identity and everything it held (uploads, seen versions); say why on the sign-in form."""
    st.session_state.clear()
    st.session_state["login_msg"] = message
    if oidc:
        st.logout()  # also clears Streamlit's identity cookie (and redirects)


def login_gate(pages: list) -> Actor:
    """Every run passes here before any page: the signed-in user (re-read from the store, so a disabled account or a
    changed role applies at once), or the sign-in form and a stop. Idle sessions are signed out.

    Not signed in, ``pages`` are registered hidden, so the page asked for keeps its address and opens after sign-in;
    nothing of it runs before."""
    store = get_store()
    idle = store.policy.idle_minutes
    now = utcnow()
    who = st.session_state.get("actor")
    oidc = oidc_config()
    if who is not None:
        last = st.session_state.get("active_at")
        if last is not None and (now - last).total_seconds() > idle * 60:
            store.record_logout(who, f"idle for more than {idle:g} minutes")
            _signed_out(f"You were signed out after {idle:g} minutes without activity. Sign in again.",
                        oidc=who.method == "oidc")
            who = None
        else:
            try:
                who = store.refresh_actor(who)
            except AuthError as exc:
                _signed_out(f"Signed out: {md(exc)}.", oidc=who.method == "oidc")
                who = None
    elif oidc and st.user.is_logged_in:  # Streamlit's identity cookie, maybe from an earlier browser session
        try:
            who = store.oidc_sign_in(st.user.to_dict(), role_claim=oidc["role_claim"], role_map=oidc["role_map"],
                                     idle_minutes=idle)
        except CaseError as exc:  # no role, disabled, expired: said on the sign-in form (signing in again may help)
            st.session_state["login_msg"] = f"Single sign-on refused: {md(exc)}"
            who = None
    if who is None:
        st.navigation(pages, position="hidden")
        _login_form(store, oidc)
        st.stop()
    st.session_state["actor"] = who
    st.session_state["active_at"] = now
    return who


def _login_form(store: CaseStore, oidc: dict | None) -> None:
    from bmcore import RUO_STATEMENT

    st.title("Bone marrow cell classifier")
    st.warning(RUO_STATEMENT, icon="⚠️")
    if msg := st.session_state.pop("login_msg", None):
        st.info(msg)
    if not oidc and not store.has_users():
        _first_admin_form(store)
        return
    st.subheader("Sign in")
    if err := st.session_state.pop("login_error", None):
        st.error(err)
    with st.form("login"):
        st.text_input("User name", key="login_user")
        st.text_input("Password", type="password", key="login_password")
        st.form_submit_button("Sign in", type="primary", on_click=_sign_in, args=(store,))
    if oidc:
        st.button(f"Sign in with {oidc['label']}", key="oidc_login", on_click=st.login, args=(oidc["provider"],))


def client_address() -> str:
    """The browser's address, for throttling failed sign-ins per client. Behind the lab's proxy (``BM_TRUST_PROXY=1``,
    set only where one is in front: clients could write the header themselves) it is the last address of
    X-Forwarded-For, the one the proxy itself saw (nginx: ``$proxy_add_x_forwarded_for``); else the connection's
    peer as Streamlit sees it; "" when neither is known."""
    if os.environ.get("BM_TRUST_PROXY") == "1":
        header = st.context.headers.get("X-Forwarded-For")
        forwarded = header.split(",")[-1].strip() if isinstance(header, str) else ""
        if forwarded:
            return forwarded[:100]
    peer = st.context.ip_address  # not a string outside a browser session (AppTest)
    return peer[:100] if isinstance(peer, str) else ""


@st.cache_resource(show_spinner=False)
def _setup_token(store_url: str) -> SetupToken:
    """The one-time token that lets a browser create the first admin of an empty store: one per server process and
    store, made the first time a browser finds no account, its link printed once on the server's console (the
    terminal running ``make run``), as Jupyter does; never logged anywhere else."""
    tok = SetupToken()
    host = st.get_option("server.address") or "localhost"
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    link = f"http://{host}:{st.get_option('server.port')}/{base + '/' if base else ''}?setup={tok.token}"
    print(f"\n  No user accounts yet. To create the first admin, open this link (it works once):\n\n    {link}\n\n"
          "  (or, on the server: .venv/bin/python -m bmcore users add NAME --role admin)\n", flush=True)
    return tok


def _first_admin_form(store: CaseStore) -> None:
    """An empty store: whoever holds the server's setup link creates the first admin here, and is signed in."""
    tok = _setup_token(_store_url())
    st.subheader("Create the first admin")
    st.write("No user accounts exist yet. The server printed a **one-time setup link** in its console (the terminal "
             "where `make run` runs). Open that link, or paste its token below; the account you create is an "
             "admin, who then adds the lab's other accounts on the **Users** page.")
    if err := st.session_state.pop("login_error", None):
        st.error(err)
    if not st.session_state.get("setup_token"):
        st.session_state["setup_token"] = st.query_params.get("setup", "")  # the link opened carries it
    with st.form("first_admin"):
        st.text_input("Setup token (the part after ?setup= in the server's link)", type="password", key="setup_token")
        st.text_input("User name (no spaces)", key="setup_user")
        st.text_input("Name shown on signatures and reports", key="setup_display")
        st.text_input("Password (at least 10 characters)", type="password", key="setup_pw1")
        st.text_input("Password again", type="password", key="setup_pw2")
        st.form_submit_button("Create the admin and sign in", type="primary", on_click=_make_first_admin,
                              args=(store, tok))


def _make_first_admin(store: CaseStore, tok: SetupToken) -> None:
    state = st.session_state
    token, pw1, pw2 = state.get("setup_token", ""), state.get("setup_pw1", ""), state.get("setup_pw2", "")
    for k in ("setup_token", "setup_pw1", "setup_pw2"):  # secrets are not kept in the session
        state[k] = ""
    try:
        if pw1 != pw2:
            raise CaseError("the two passwords differ")
        who = store.add_first_admin(state.get("setup_user", ""), pw1, display_name=state.get("setup_display", ""),
                                    setup=tok, token=token)
    except CaseError as exc:  # AuthError included
        state["login_error"] = f"Not created: {md(exc)}"
        state["setup_token"] = token  # a mistyped password does not cost the token's retyping
    else:
        st.query_params.pop("setup", None)  # the spent token leaves the address bar
        state["actor"], state["active_at"] = who, utcnow()


def _sign_in(store: CaseStore) -> None:
    """The sign-in form's callback: the password is checked and emptied from the session at once."""
    name, pw = st.session_state.get("login_user", ""), st.session_state.get("login_password", "")
    st.session_state["login_password"] = ""
    try:
        who = store.authenticate(name, pw, client=client_address())
    except AuthError as exc:
        st.session_state["login_error"] = md(exc)
    else:
        st.session_state["actor"] = who
        st.session_state["active_at"] = utcnow()


def idle_watch() -> None:
    """Signs an idle session out on the server's own timer, not at its next click: a small fragment reruns every few
    seconds (its runs are not activity: only full runs, through ``login_gate``, are) and, once the session has been
    idle for ``BM_SESSION_IDLE_MINUTES``, reruns the whole app, whose gate then signs it out and draws only the
    sign-in form: a tab left open shows no case data after the timeout."""
    idle = get_store().policy.idle_minutes
    every = max(1.0, min(30.0, idle * 60 / 6))

    @st.fragment(run_every=every)
    def watch() -> None:
        last = st.session_state.get("active_at")
        if st.session_state.get("actor") is not None and last is not None and \
                (utcnow() - last).total_seconds() > idle * 60:
            st.rerun(scope="app")

    with st.sidebar:
        watch()


def user_box(sb) -> None:
    """Who is signed in, with their role, and the sign-out button."""
    who = actor()
    sb.markdown(f"Signed in as **{md(who.label)}** · {who.role}")
    sb.button("Sign out", key="sign_out", on_click=_sign_out)


def _sign_out() -> None:
    who = st.session_state.get("actor")
    if who is not None:
        get_store().record_logout(who)
    _signed_out("You are signed out.", oidc=who is not None and who.method == "oidc")


def _persist(key: str, default):
    """Widget state that survives page switches: the widget writes to ``_w_<key>``, we keep ``key`` (``kept``, for a
    widget drawn with its own key and callback)."""
    kept(key, default)


def kept(key: str, default, valid=None) -> dict:
    """Keyword arguments for a widget whose value outlives it: kept in ``key``, the widget being ``_w_{key}``.

    Streamlit forgets a widget's value once a run does not draw it (a closed tab, another page). The value kept here
    is handed back to the widget each time it is drawn; one outside ``valid`` (a class no longer in the case, a page
    past the end) falls back to ``default``. The widget itself must not be given a default value as well."""
    value = st.session_state.get(key, default)
    if valid is not None and value not in valid:
        value = default
    st.session_state[key] = st.session_state[f"_w_{key}"] = value
    return {"key": f"_w_{key}", "on_change": _store_back, "args": (key, valid)}


def form_source(prefix: str, now, widget_key: str):
    """What a keyed form (its widgets keyed ``{prefix}...``) was filled from, to send back to the store as
    ``expected``: ``now`` (the record as stored) when the form is drawn afresh, i.e. its widget ``widget_key`` is not
    in the session (Streamlit dropped it after another page, or ``forget_form`` cleared it); else what it was filled
    from then. A result other than ``now`` means a colleague changed the record since: say so, keep what was typed."""
    key = f"{prefix}shown"
    if key not in st.session_state or widget_key not in st.session_state:
        st.session_state[key] = now
    return st.session_state[key]


def forget_form(prefix: str) -> None:
    """Drop a keyed form's values and what it was filled from (keys ``{prefix}...``): it is drawn afresh. Call it
    from a callback, or before a rerun: a drawn widget's value cannot be changed in the same run."""
    for k in [k for k in st.session_state if str(k).startswith(prefix)]:
        del st.session_state[k]


def _store_back(key: str, valid=None):
    """A picker's on_change: copy widget ``_w_{key}`` into ``key``, the truth the page reads. With ``valid`` (the
    values the picker showed), a value outside them is dropped: a select box whose option text changed under a
    stale screen hands back that old text instead of a value, and the page stays on what it showed."""
    value = st.session_state[f"_w_{key}"]
    if valid is None or value in valid:
        st.session_state[key] = value


def sidebar() -> Predictor | None:
    """Model picker (for new cases), its review thresholds and the active case; returns the picked predictor."""
    paths = available_bundles()
    sb = st.sidebar
    user_box(sb)
    if not actor().can("view"):  # a student: no case, no model picker
        sb.caption(RUO_STATEMENT)
        return None
    _active_case_picker(sb)
    if not paths:
        sb.error("No model bundle found under assets/models (or BM_MODELS_DIR).")
        return None
    labels = {str(p): p.name for p in paths}
    # the model for new cases: the one in force (an admin's approval or restore reaches an open session at its next
    # rerun: one row read, 0.18 ms on SQLite here, 2026-12-08); a session that picked another in the sidebar keeps it
    default = str(default_bundle_path() or pick_default(paths))
    current, followed = st.session_state.get("bundle"), st.session_state.get("bundle_in_force")
    if current is not None and current == followed != default and default in labels:
        st.toast(f"New cases are now classified by **{labels[default]}** (an admin's change). Classified cases keep "
                 "their model.", icon=":material/update:", duration="long")
        current = st.session_state["bundle"] = default
    st.session_state["bundle_in_force"] = default
    _persist("bundle", current or default)
    if st.session_state["bundle"] not in labels:
        st.session_state["bundle"] = st.session_state["_w_bundle"] = str(paths[0])
    if not actor().can("classify"):  # the model picker and its thresholds only matter to whoever classifies
        sb.caption(RUO_STATEMENT)
        try:
            return get_predictor(st.session_state["bundle"])
        except (BundleError, OSError, RuntimeError):
            return None
    sb.selectbox("Model for new cases", list(labels), format_func=labels.get, key="_w_bundle", on_change=_store_back,
                 args=("bundle",), help="Bundles in assets/models and in BM_MODELS_DIR. A case is always shown and "
                                        "explained with the model that classified it. Unless you pick another here, "
                                        "new cases follow the model in force, which an admin may change.")
    try:
        pred = get_predictor(st.session_state["bundle"])
    except (BundleError, OSError, RuntimeError) as exc:
        sb.error(f"This model cannot be loaded: {exc}")
        return None
    sb.caption(f"{model_label(pred.bundle.name, pred.bundle.sha256)} · {len(pred.classes)} classes · "
               f"{pred.bundle.backbone} · {pred.device}")
    # thresholds are per model: each starts at the model's validated review rule
    tkey = f"threshold::{pred.bundle.sha256[:16]}"
    _persist(tkey, round(pred.rules.uncertain_below, 2))
    sb.slider("Review when confidence is below", 0.0, 1.0, step=0.01, key=f"_w_{tkey}", on_change=_store_back,
              args=(tkey,), help="New cases only. Starts at this model's rule chosen on its validation split; "
                                 "critical classes (blasts) go to review whatever this says.")
    st.session_state["threshold"] = st.session_state[tkey]
    hkey = f"hairy_threshold::{pred.bundle.sha256[:16]}"
    _persist(hkey, pred.rules.hairy_flag_at or 0.5)
    if HAIRY_CELL_CODE in pred.classes:
        sb.slider("Hairy-cell flag at P(HAC) ≥", 0.05, 0.95, step=0.05, key=f"_w_{hkey}", on_change=_store_back,
                  args=(hkey,), help="New cases only.")
    st.session_state["hairy_threshold"] = st.session_state[hkey]
    sb.caption(RUO_STATEMENT)
    return pred


def new_case_rules(pred: Predictor):
    """The review rules a case classified now by ``pred`` is stored with (this session's sidebar thresholds)."""
    return pred.review_rules(st.session_state.get("threshold"),
                             st.session_state.get("hairy_threshold") if pred.covers_hairy_cells else None)


def _active_case_picker(sb) -> None:
    cases = get_store().list_cases(actor())
    ids = [c["id"] for c in cases]
    # a reload keeps the tab's case (its id is in the address); a new session starts with none, never another user's
    if "case_id" not in st.session_state:
        q = st.query_params.get("case")
        st.session_state["case_id"] = int(q) if q and q.isdigit() and int(q) in ids else None
    _persist("case_id", st.session_state.get("case_id"))
    if st.session_state["case_id"] not in ids:
        st.session_state["case_id"] = st.session_state["_w_case_id"] = None
    if cases:
        names = {c["id"]: f"{clean(c['case'])} ({'demo, ' if c['demo'] else ''}{c['short']})" for c in cases}
        sb.selectbox("Active case", ids, format_func=names.get, key="_w_case_id", on_change=_store_back,
                     args=("case_id", ids), index=None, placeholder="Choose a case…")
    if st.session_state["case_id"] is not None:
        st.query_params["case"] = str(st.session_state["case_id"])
    elif "case" in st.query_params:
        del st.query_params["case"]


def set_active_case(case_id: int | None) -> None:
    st.session_state["case_id"] = case_id


def active_case():
    """The active case from the store, or None (with a hint) if there is none yet."""
    cid = st.session_state.get("case_id")
    who = st.session_state.get("actor")
    # only a role that may classify is told to start a case; a viewer or pathologist-only role chooses one
    start = "Start one on the **Classify** page, or choose" if who is not None and who.can("classify") else "Choose"
    if not cid:
        st.info(f"No active case. {start} one under **Active case** in the sidebar.")
        return None
    try:
        case = get_store().get_case(cid, actor())
    except CaseError:
        st.session_state.pop("case_id", None)
        st.info(f"That case no longer exists. {start} another under **Active case** in the sidebar.")
        return None
    if case.demo:  # said on every page that shows the case
        st.warning(md(DEMO_NOTE), icon=":material/school:")
    return case


def model_label(name: str, sha256: str = "") -> str:
    """A model as pages name it: its bundle name and the start of its weights' sha256 (two bundles may share a name;
    the report prints the whole digest)."""
    return f"{name} (weights {sha256[:8]})" if sha256 else name


def case_model(case) -> str:
    """The model that classified ``case``, as ``model_label`` names it."""
    return model_label(case.model_name, case.model_sha256)


def ruo_banner() -> None:
    st.warning(RUO_STATEMENT, icon="⚠️")


def restricted_page(title: str, action: str, refusal: str) -> Actor:
    """A page only some roles may use: its title and the statement, then ``refusal`` and a stop for anyone whose role
    does not allow ``action`` (the store checks the role again on every read and write); returns the user."""
    st.title(title)
    ruo_banner()
    who = actor()
    if not who.can(action):
        st.info(refusal)
        st.stop()
    return who


def image_bytes(case_id: int, cell) -> bytes | None:
    """The original upload if this session still holds it, else the stored thumbnail."""
    return st.session_state.get("originals", {}).get((case_id, cell.position)) or cell.thumbnail


def predictor() -> Predictor:
    """The predictor the sidebar selected; stops the page with a message when there is none."""
    if not st.session_state.get("predictor_ok") or "bundle" not in st.session_state:
        st.error("No usable model is loaded; see the sidebar.")
        st.stop()
    return get_predictor(st.session_state["bundle"])


@st.cache_data(max_entries=512, show_spinner=False)
def heatmap(bundle_path: str, data: bytes, class_code: str, method: str):
    """(cam, rgb-as-the-model-sees-it, class explained) for one crop; cached per crop, class and method, so moving
    the opacity slider or coming back to a cell is instant."""
    return get_predictor(bundle_path).cam(data, class_code, method)


def cells_frame(case):
    """The case's cells as a table (one row per cell), labels as the reviewer left them; words from caserules."""
    import pandas as pd

    from bmcore.tasks import cell_name

    rows = []
    for c in case.cells:
        rows.append({"#": c.position + 1, "file": clean(c.name), "status": caserules.status(c),
                     "predicted": c.predicted, "name": cell_name(c.predicted) if c.predicted else "",
                     "confidence": c.confidence, "top-3": caserules.top3_text(c),
                     "review": "; ".join(caserules.review_reasons(c)),
                     "uncertain": bool(c.uncertain), "critical": ",".join(caserules.critical_codes(c)),
                     "hairy flag": bool(c.hairy_flag),
                     "final": c.label or "", "reviewed by": clean(reviewer_text(c)),
                     "error": c.error or c.reject_reason,
                     "cell_id": c.id, "version": c.version})
    return pd.DataFrame(rows, columns=["#", "file", "status", "predicted", "name", "confidence", "top-3", "review",
                                       "uncertain", "critical", "hairy flag", "final", "reviewed by", "error",
                                       "cell_id", "version"])


def seen_versions(case_id: int) -> dict[int, int]:
    """{cell id: version} of the cells as this reviewer opened them (or last reloaded them on purpose).

    This, not the version re-read on each rerun, is what an action sends to the store: a colleague's change that
    lands after the reviewer opened a cell makes the action a conflict instead of a silent overwrite.
    """
    return st.session_state.setdefault(f"seen::{case_id}", {})


def job_status(case) -> dict | None:
    """The case's latest classification job as the pages show it (status corrected for a dead worker)."""
    from bmcore.jobs import owner_alive

    runner = get_runner()  # first use in a process marks the jobs a stopped server left behind
    job = get_store().latest_job(case.id)
    if job and job["status"] in JOB_LIVE and job["owner"] != runner.owner and \
            not owner_alive(job["owner"], job["heartbeat"]):  # another server died after this one started
        get_store().interrupt_jobs(lambda owner, hb: owner == runner.owner or owner_alive(owner, hb))
        job = get_store().latest_job(case.id)
    if job and job["status"] in JOB_LIVE and not runner.running(job["id"]) and job["owner"] == runner.owner:
        job["status"] = "interrupted"  # this process owns it but no longer runs it
    return job


def _upload_round(state) -> int:
    return state["upload_round"] if "upload_round" in state else 0


def upload_key(state) -> str:
    """The Classify uploader's key in a session's state: "uploads", then a new one after each ``empty_uploader``."""
    n = _upload_round(state)
    return "uploads" if n == 0 else f"uploads_{n}"


def empty_uploader(state) -> None:
    """Once its files are in a case, the Classify uploader starts empty (a new key): 500 file chips left on the page
    took the browser ~1.4 CPU-s more while the case was classified (2026-11-27, 6 cases each)."""
    state["upload_round"] = _upload_round(state) + 1


def job_banner(case) -> dict | None:
    """While the case is being classified: progress, refreshed every second (every 3 s while other jobs share the
    classifier); the page reruns when it ends.

    Returns the case's latest job as ``job_status`` reads it (None if it never had one)."""
    summ = caserules.summary(case)
    job = job_status(case)
    live = job is not None and job["status"] in JOB_LIVE
    if not summ.pending:
        if job is not None:
            st.caption(f"Classification complete: all {summ.cells} files of this case are processed.")
        return job
    if live:
        # refreshed once a second while this job has the classifier alone; every 3 s while it shares it (each refresh
        # is a rerun on the server and a redraw in every waiting browser: 8 sessions at once, bench/load.py)
        others, _ = get_runner().load(job["id"])

        @st.fragment(run_every=3.0 if others else 1.0)
        def progress() -> None:
            # in the job's last chunk, wait for its end (under a second) rather than learn of it at the next check
            get_runner().wait_near_end(job["id"], timeout=0.8)
            j = get_store().latest_job(case.id)
            if j is None or j["status"] not in JOB_LIVE:
                st.rerun()  # the whole page, now complete
            others, waiting = get_runner().load(j["id"])
            share = f" The classifier is shared with {others} other job(s) ({waiting} crops)." if others else ""
            st.progress(j["done"] / max(1, j["total"]),
                        text=f"Classifying in the background: {j['done']} of {j['total']} cells done.{share} "
                             "You can leave this page or reload; the results are saved as they come.")
        progress()
    else:
        # the page read the case before its job ended (a job of a few cells can end between the two reads): had the
        # job finished them, this page would call a complete case partial and never redraw; draw it again instead
        fresh = get_store().get_case(case.id, actor())
        if caserules.summary(fresh).pending != summ.pending:
            st.rerun()
        why = md((job or {}).get("error") or "the classification did not finish")
        st.error(f"**Partial case:** {summ.pending} of {summ.cells} cells are not classified ({why}). They are not "
                 "counted and the case cannot be signed off. On the **Classify** page, upload the same files again "
                 "to finish it (only the missing cells are classified), or delete the case.")
    return job


def code_key(codes, title: str = "What the codes mean") -> None:
    """A key to the class codes a page shows (every code in ``codes``, in order, once), in an expander."""
    import pandas as pd

    with st.expander(title):
        st.dataframe(pd.DataFrame(glossary(codes), columns=["code", "cell type"]), hide_index=True, width="stretch")


# -- teaching quizzes (views/quizzes.py, views/teaching.py) -------------------------------------------------------
def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def _kappa(k: float | None) -> str:
    return "not defined" if k is None else f"{k:.2f}"


def quiz_scores(result: dict) -> None:
    """A graded attempt's scores beside the model's on the same cells, per class and the confusion matrix."""
    import pandas as pd

    from bmcore.tasks import cell_name

    g, m = result["grade"], result["model"]
    a, b, c, d = st.columns(4)
    a.metric("Strict score", f"{g['strict']} of {g['n']} ({_pct(g['strict_score'])})",
             help="Answers equal to the label the signing pathologist signed.")
    b.metric("Tolerant score", f"{g['tolerant']} of {g['n']} ({_pct(g['tolerant_score'])})",
             help="A neighbouring maturation stage of the signed label also counts: " + quiz_adjacent())
    c.metric("Cohen's kappa", _kappa(g["kappa"]), help="Agreement with the signed labels beyond what chance gives "
             "(1: complete, 0: no better than chance). Unanswered cells count as a disagreement.")
    d.metric("The model on the same cells", f"{m['strict']} of {m['n']} ({_pct(m['strict_score'])})",
             help="Strict score of the model's label when the case was classified; an image its gate refused "
                  "counts as wrong.")
    st.caption(f"The model on the same cells: {_pct(m['strict_score'])} strict, {_pct(m['tolerant_score'])} "
               f"tolerant, kappa {_kappa(m['kappa'])}. "
               + ("Unanswered cells: " + str(g["n"] - g["answered"]) + "." if g["n"] != g["answered"] else ""))
    model_per = {r["class"]: r for r in m["per_class"]}
    rows = [{"class": r["class"], "cell type": cell_name(r["class"]), "cells": r["cells"],
             "strict": _pct(r["sensitivity"]), "tolerant": _pct(r["tolerant_sensitivity"]),
             "model, strict": _pct(model_per[r["class"]]["sensitivity"])} for r in g["per_class"]]
    st.markdown("**Sensitivity per class** (of the cells signed as each class, the share answered as it)")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.markdown("**Confusion matrix** (rows: the signed label; columns: the answer)")
    st.dataframe(pd.DataFrame(g["confusion"], index=g["labels"], columns=g["columns"]), width="stretch")


def quiz_classes_over_time(history: list[dict]) -> None:
    """One learner's strict sensitivity per class, one column per submitted quiz in the order taken."""
    import pandas as pd

    if not history:
        return
    cols = [f"{h['title']} · {h['submitted_at']:%Y-%m-%d} (#{h['quiz_id']})" for h in history]
    table = pd.DataFrame({c: {r["class"]: r["sensitivity"] for r in h["grade"]["per_class"]}
                          for c, h in zip(cols, history)})
    st.markdown("**Per class over time** (strict sensitivity, one column per quiz, oldest first)")
    st.dataframe(table, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="percent") for c in cols})


def quiz_adjacent() -> str:
    from bmcore.quiz import adjacent_text

    return adjacent_text() + "."


def quiz_wrong_cells(result: dict, columns: int = 4) -> None:
    """Each cell answered wrong (strict), with the answer, the signed label, the model's, and the model's heatmap
    for the signed class where the model that classified it is installed and knows that class."""
    from bmcore.explain import overlay
    from bmcore.tasks import cell_name

    wrong = [c for c in result["cells"] if not c["strict"]]
    if not wrong:
        st.success("Every answer matches the signed label.")
        return
    st.markdown(f"**{len(wrong)} answer(s) differ from the signed label** (✓ tolerant: a neighbouring stage)")
    for row in range(0, len(wrong), columns):
        for col, c in zip(st.columns(columns), wrong[row: row + columns]):
            path = bundle_path_of(c["model_sha256"])
            code = c["expert"] if c["expert"] in c["model_classes"] else \
                c["model"] if c["model"] in c["model_classes"] else None
            shown = False
            if path is not None and code is not None:
                try:
                    cam, rgb, code = heatmap(str(path), c["image"], code, "gradcam")
                    col.image(overlay(rgb, cam, 0.45), width="stretch")
                    shown = True
                except (BundleError, OSError, RuntimeError, ValueError):
                    pass
            if not shown:
                col.image(c["image"], width="stretch")
            col.markdown(f"**#{c['number']}** · you: **{md(c['answer'])}**" + (" ✓ tolerant" if c["tolerant"] else "")
                         + f"  \nsigned: **{c['expert']}** {cell_name(c['expert'])}  \nmodel: {md(c['model'])}")
            col.caption(f"Grad-CAM for {code} ({cell_name(code)})" if shown else
                        "No heatmap: the model that classified this cell is not installed here" if path is None
                        else "No heatmap: the model does not know this class")
