"""Single sign-on, end to end: a real OpenID Connect provider (oidc-provider-mock) on loopback, Streamlit's own
``st.login`` configured in a secrets.toml, Debian's chromium driving the whole round trip.

The provider's users carry a ``groups`` claim; ``[bm_oidc.roles]`` maps it to the app's roles. A pathologist signs in
at the provider, lands in the app under their own account (created on first sign-in, no password here), and signs a
case off with that fresh sign-in; someone whose groups map to no role is refused. Skipped where chromium or
playwright is missing, unless BM_REQUIRE_E2E=1 (CI), then it fails.
"""

import re
import secrets
from urllib.parse import quote


from bench import appdriver
from bmcore.cases import CaseStore, CellInput
from tests.conftest import REPO, need_browser

ART = REPO / "test-artifacts" / "e2e"
TIMEOUT_S = 90


def _put_user(issuer: str, sub: str, claims: dict) -> None:
    import httpx

    r = httpx.put(f"{issuer}/users/{quote(sub)}", json=claims, timeout=10)
    assert r.status_code == 204, r.text


def _sign_in_at_provider(page, sub: str) -> None:
    """From the app's sign-in page through the provider's form and back."""
    page.get_by_role("button", name="Sign in with Lab SSO").click()
    page.get_by_placeholder("sub").wait_for()  # the provider's own authorization form
    page.get_by_placeholder("sub").fill(sub)
    page.get_by_role("button", name="Authorize").click()


def test_oidc_round_trip_roles_from_a_claim_and_a_signature(tmp_path):
    need_browser()
    import oidc_provider_mock
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "sso.db"
    store = CaseStore(f"sqlite:///{db}")
    appdriver.add_users(db)
    tech = store.authenticate("tech", appdriver.USERS["tech"][1])
    cid = store.create_case("SSO-1", [CellInput(f"c{i}.jpg", True, predicted="LYT", confidence=0.97,
                                                probabilities={"LYT": 0.97, "BLA": 0.03}) for i in range(3)],
                            actor=tech, model_name="m", model_sha256="ab" * 32, model_classes=["LYT", "BLA"])
    store.review_cells(cid, tech, {c.id: c.version for c in store.get_case(cid).cells})  # reviewed by the technologist: ready for a pathologist's signature
    # the specimen id and a target the count meets are set beforehand: this test is about the identity provider's
    # signature (the sign-off box's own entries are driven in tests/test_e2e_signoff.py)
    store.set_case_details(cid, tech, specimen={"specimen_id": "SSO-ACC-1"}, target_count=3)

    with oidc_provider_mock.run_server_in_thread() as idp:
        issuer = f"http://localhost:{idp.server_port}"
        _put_user(issuer, "alice", {"preferred_username": "alice", "name": "Alice Smith",
                                    "email": "alice@lab.example", "groups": ["staff", "bm-pathologists"]})
        _put_user(issuer, "mallory", {"preferred_username": "mallory", "name": "Mallory", "groups": ["students"]})
        port = appdriver.free_port()
        secrets_file = tmp_path / "secrets.toml"
        secrets_file.write_text(f"""
[auth]
redirect_uri = "http://127.0.0.1:{port}/oauth2callback"
cookie_secret = "{secrets.token_hex(32)}"

[auth.labsso]
client_id = "bm-classifier"
client_secret = "{secrets.token_hex(16)}"
server_metadata_url = "{issuer}/.well-known/openid-configuration"
client_kwargs = {{ scope = "openid profile email", prompt = "login" }}

[bm_oidc]
provider = "labsso"
label = "Lab SSO"
role_claim = "groups"

[bm_oidc.roles]
bm-pathologists = "pathologist"
bm-technologists = "technologist"
""")
        with appdriver.app_server(db, tmp_path / "server.log", port=port,
                                  extra_args=("--secrets.files", str(secrets_file))) as srv, \
                sync_playwright() as pw:
            browser = appdriver.launch(pw)
            page = appdriver.new_page(browser, TIMEOUT_S)
            page.goto(srv.url)
            expect(page.get_by_role("button", name="Sign in with Lab SSO")).to_be_visible()
            _sign_in_at_provider(page, "alice")
            expect(page.get_by_text("Signed in as")).to_be_visible()
            expect(page.get_by_text(re.compile(r"Signed in as Alice Smith \(alice\) · pathologist"))).to_be_visible()
            appdriver.wait_idle(page)
            page.screenshot(path=str(ART / "sso_signed_in.png"), full_page=True)
            users = {u["username"]: u for u in store.list_users()}
            assert users["alice"]["source"] == "oidc" and users["alice"]["role"] == "pathologist"

            # a fresh identity-provider sign-in is the re-authentication: no password box, the signature says how
            appdriver.choose(page, "Active case", "SSO-1")
            page.get_by_role("link", name="Review").first.click()
            appdriver.settle(page)
            expect(page.get_by_text(re.compile("Your password, to sign"))).to_have_count(0)
            appdriver.sign_off(page, None)
            expect(page.get_by_text("signed off by").first).to_be_visible()
            case = store.get_case(cid)
            assert case.status == "signed" and case.signature["username"] == "alice"
            assert case.signature["proof"].startswith("identity provider sign-in at")
            assert case.signature["specimen_id"] == "SSO-ACC-1" and case.signature["under_target"] is False
            assert store.audit(cid)[-1]["user_id"] == users["alice"]["id"]
            page.screenshot(path=str(ART / "sso_signed_case.png"), full_page=True)

            # sign out, then someone whose groups map to no role: refused, nothing shown
            page.get_by_role("button", name="Sign out").click()
            page.get_by_role("button", name="End session").click()  # the provider's own sign-out page
            expect(page.get_by_role("button", name="Sign in with Lab SSO")).to_be_visible()
            _sign_in_at_provider(page, "mallory")
            expect(page.get_by_text(re.compile("Single sign-on refused: mallory has no role in this app"))) \
                .to_be_visible()
            expect(page.get_by_text("Signed in as")).to_have_count(0)
            expect(page.get_by_text("SSO-1")).to_have_count(0)
            page.screenshot(path=str(ART / "sso_refused.png"), full_page=True)
            browser.close()
    assert "mallory" not in {u["username"] for u in store.list_users()}
    assert [e["event"] for e in store.login_events() if e["user"] == "mallory"] == ["refused-sign-in"] * len(
        [e for e in store.login_events() if e["user"] == "mallory"]) != []
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "Uncaught" not in log, log[-2000:]
