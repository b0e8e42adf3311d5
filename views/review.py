"""Review and sign-off: every action carries the cell (and the version of it) that the reviewer saw.

The cell picker's value is a cell id kept in session state per case, never an option text, and buttons act
through callbacks that receive the cell id and the version the reviewer opened; the store refuses a stale
action ("changed by ... reload and try again") and saves nothing.
"""

import pandas as pd
import streamlit as st

import appkit
from bmcore.db import utcnow
from bmcore import caserules
from bmcore.cases import STATUS_SIGNED, CaseError, ConflictError, reviewer_text, signature_text, signer_text
from bmcore.tasks import TASKS, cell_name

BULK_ASK_ABOVE = 5  # bulk confirmation of more cells than this needs an explicit tick

st.title("Review and sign-off")
appkit.ruo_banner()
store = appkit.get_store()

cases = store.list_cases()
with st.expander(f"All cases ({len(cases)})", expanded=False):
    if cases:
        st.dataframe(pd.DataFrame(cases).drop(columns=["id"]), hide_index=True, width="stretch")
who = appkit.actor()  # every change below is recorded under this signed-in user, and the store checks the role
case = appkit.active_case()
if case is None:
    st.stop()

PICK = f"review_cell_{case.id}"        # the chosen cell id (the truth)
WPICK = f"_w_review_cell_{case.id}"    # the picker widget mirroring it
seen = appkit.seen_versions(case.id)


def _say(kind: str, text: str) -> None:
    st.session_state["review_msg"] = (kind, text)
    st.session_state["review_msg_case"] = case.id


def _run(fn, ok_msg: str) -> bool:
    try:
        fn()
    except ConflictError as exc:
        _say("warning", f"Not saved: {exc}")
    except CaseError as exc:
        _say("error", f"Not saved: {exc}")
    else:
        _say("success", ok_msg)
        return True
    return False


def review(cell_id: int, pos: int, seen_version: int, label: str | None, predicted: str, next_id: int | None) -> None:
    """Confirm (label None) or relabel cell ``cell_id`` as seen at ``seen_version``; then show ``next_id``."""
    new = predicted if label is None else st.session_state[f"label_{case.id}_{cell_id}"]
    verb = f"confirmed as {new}" if label is None else f"set to {new} ({cell_name(new)})"
    out = {}

    def do():
        out["v"] = store.review_cell(cell_id, appkit.actor(), new, expected_version=seen_version,
                                     case_id=case.id)

    if _run(do, f"#{pos} {verb}."):
        seen[cell_id] = out["v"]
        if next_id is not None:
            st.session_state[PICK] = next_id
            st.session_state["review_msg"] = ("success", st.session_state["review_msg"][1]
                                              + " Showing the next cell to review.")


def reload_cell(cell_id: int, version: int) -> None:
    seen[cell_id] = version
    st.session_state.pop(f"label_{case.id}_{cell_id}", None)  # the label box shows the stored label again
    _say("info", "Reloaded: you now see the cell as it is stored.")


def confirm_bulk(expected: dict[int, int]) -> None:
    out = {}

    def do():
        out["v"] = store.confirm_all(case.id, appkit.actor(), expected_versions=expected)

    if _run(do, f"{len(expected)} cells confirmed."):
        seen.update(out["v"])


def sign(expected: dict[int, int]) -> None:
    password = st.session_state.get(f"sign_pw_{case.id}")
    st.session_state[f"sign_pw_{case.id}"] = ""  # used once: not kept in the session, the box is emptied
    if _run(lambda: store.sign_off(case.id, appkit.actor(), password=password, expected_versions=expected),
            f"Case {case.case_code} signed off by {appkit.actor().label}."):
        seen.clear()  # sign-off bumps every cell's version


def reopen() -> None:
    if _run(lambda: store.reopen(case.id, appkit.actor(), st.session_state.get(f"reopen_reason_{case.id}", "")),
            f"Case {case.case_code} reopened."):
        seen.clear()


def _role(role: str) -> str:
    return ("an " if role[0] in "aeiou" else "a ") + role


def sign_off_box(shown: dict[int, int]) -> None:
    """Sign-off is a deliberate act: only a pathologist (or admin) sees it, and signs with their password (or a
    fresh identity-provider sign-in). The store checks both again."""
    if not who.can("sign"):
        st.button("Sign off case", key="sign_off", disabled=True,
                  help=f"Signing off needs a pathologist's account; you are {_role(who.role)}.")
        st.caption(f"Only a pathologist signs off; you are {_role(who.role)}.")
        return
    if who.method == "oidc":
        oidc = appkit.oidc_config() or {}
        age = (utcnow() - who.authenticated_at).total_seconds() / 60
        limit = store.policy.reauth_minutes
        if age > limit:
            st.caption(f"To sign, confirm it is you: sign in again with {oidc.get('label', 'your identity provider')} "
                       f"(your sign-in is {age:.0f} min old; a signature needs one from the last {limit:g} min). "
                       f"You come back to the Home page: open case {case.case_code} again and sign.")
            st.button("Sign in again to sign", key="reauth", on_click=st.login, args=(oidc.get("provider"),))
            return
        st.caption(f"Signing as {who.label}, signed in with {oidc.get('label', 'your identity provider')} "
                   f"{age:.0f} min ago.")
    else:
        st.text_input(f"Your password, to sign as {who.label}", type="password", key=f"sign_pw_{case.id}",
                      autocomplete="current-password")
    st.button("Sign off case", type="primary", key="sign_off", on_click=sign, args=(shown,))


kind, msg = st.session_state.pop("review_msg", (None, None)) if st.session_state.get("review_msg_case") == case.id \
    else (None, None)
st.session_state.pop("review_msg", None)
if msg:
    getattr(st, kind)(msg)

appkit.job_banner(case)
summ = caserules.summary(case)
signed = case.status == STATUS_SIGNED
signer = signer_text(case) if signed else ""
st.subheader(f"Case {case.case_code}: " + (f"signed off by {signer}" if signed else "open"))
if not who.can("review"):
    st.info(f"You are signed in as {_role(who.role)}: you can read this case, its cells and its audit trail. "
            "Reviewing needs a technologist's account; signing off a pathologist's.")
st.caption(f"Classified by **{case.model_name}** · {caserules.case_rules(case).describe()}")
m1, m2, m3, m4, m5 = st.columns(5)
m1.metric("Reviewed", f"{summ.reviewed} / {summ.classified}")
m2.metric("Need review, unresolved", summ.needs_review,
          help="Uncertain, possible blast or hairy-cell flag: only a person may resolve these")
m3.metric("Rejected (not a cell crop)", sum(1 for c in case.cells if caserules.status(c) == caserules.REJECTED
                                             and c.final_label is None),
          help="Refused by the model's quality / out-of-distribution gate; left out of the differential unless you "
               "give them a label here")
m4.metric("Unreadable files", summ.unreadable)
m5.metric("Not classified yet", summ.pending)

queue = caserules.review_queue(case)
if not signed and not queue:
    st.info("This case has no classified cell to review yet" + (" (classification is running or was interrupted)."
                                                                 if summ.pending else "."))
if not signed and queue and who.can("review"):
    st.markdown("#### Review a cell")
    by_id = {c.id: c for c in queue}
    ids = [c.id for c in queue]
    chosen = st.session_state.get(PICK)
    if chosen not in by_id:
        chosen = ids[0]
    st.session_state[PICK] = st.session_state[WPICK] = chosen

    def label_of(cid: int) -> str:
        c = by_id[cid]
        why = caserules.review_reasons(c)
        tail = (f" · REJECTED: {c.reject_reason}" if caserules.status(c) == caserules.REJECTED and c.final_label is None
                else f" · {', '.join(why).upper()}" if why else "")
        if c.final_label is not None:
            tail += f" · reviewed: {c.final_label} by {reviewer_text(c)}"
        conf = f" ({c.confidence:.2f})" if c.confidence is not None else ""
        return f"#{c.position + 1} {c.name} — model: {c.predicted}{conf}{tail}"

    st.selectbox("Cell (flagged and uncertain first, then unreviewed)", ids, format_func=label_of, key=WPICK,
                 on_change=lambda: st.session_state.update({PICK: st.session_state[WPICK]}))
    cell = by_id[chosen]
    seen.setdefault(cell.id, cell.version)  # the version this reviewer opened
    seen_v = seen[cell.id]
    nxt = caserules.next_cell_id(queue, cell.id)
    left, right = st.columns([1, 2])
    data = appkit.image_bytes(case.id, cell)
    if data:
        left.image(data, width="stretch", caption=f"#{cell.position + 1} {cell.name}")
    if cell.version != seen_v:
        right.warning(f"#{cell.position + 1} changed since you opened it: now **{cell.label or 'unlabelled'}**"
                      + (f", set by {reviewer_text(cell)}" if cell.reviewed_by else "")
                      + ". Your actions on it are refused until you reload it.")
        right.button("Reload this cell", key=f"reload_{cell.id}", on_click=reload_cell, args=(cell.id, cell.version))
    if caserules.status(cell) == caserules.REJECTED and cell.final_label is None:
        right.warning(f"The model's gate rejected this image: {cell.reject_reason}. It is left out of the "
                      "differential; give it a label only if it is a single bone marrow cell you can classify.")
    why = caserules.review_reasons(cell)
    if why:
        right.info("Needs your review: " + ", ".join(why) + ".")
    right.write("Model: " + " · ".join(f"**{k}** {cell_name(k)} {v:.2f}" for k, v in caserules.top3(cell)))
    if cell.final_label is not None:
        right.caption(f"Reviewed: {cell.final_label} by {reviewer_text(cell)}")
    model_classes = list(case.model_classes or [])
    options = model_classes + [c for c in TASKS["bm21"].classes if c not in model_classes]
    right.selectbox("Label", options, index=options.index(cell.label) if cell.label in options else 0,
                    format_func=lambda c: f"{c} {cell_name(c)}" + ("" if c in model_classes else " (not a model class)"),
                    key=f"label_{case.id}_{cell.id}")
    b1, b2 = right.columns(2)
    b1.button("Confirm model's label", key="confirm_btn", on_click=review,
              args=(cell.id, cell.position + 1, seen_v, None, cell.predicted, nxt),
              disabled=caserules.status(cell) != caserules.OK or (cell.final_label == cell.predicted))
    b2.button("Save label", key="save_btn", type="primary", on_click=review,
              args=(cell.id, cell.position + 1, seen_v, "chosen", cell.predicted, nxt))

    st.markdown("#### Whole case")
    bulk = [c for c in case.cells if caserules.bulk_confirmable(c)]
    expected = {c.id: seen.get(c.id, c.version) for c in bulk}
    c1, c2 = st.columns(2)
    with c1:
        if len(bulk) > BULK_ASK_ABOVE:
            with st.expander(f"The {len(bulk)} confident cells a bulk confirmation would take"):
                st.dataframe(pd.DataFrame([{"#": c.position + 1, "file": c.name, "model": c.predicted,
                                            "confidence": round(c.confidence or 0, 2)} for c in bulk]),
                             hide_index=True, width="stretch")
            # keyed by exactly these cells at these versions: a tick never carries over to another case or set
            tick = f"bulk_ok_{case.id}_{hash(tuple(sorted(expected.items())))}"
            ok_many = st.checkbox(f"I have looked at these {len(bulk)} cells and agree with the model", key=tick)
        else:
            ok_many = True
        st.button(f"Confirm the {len(bulk)} confident unreviewed cell(s)", key="confirm_all",
                  disabled=not bulk or not ok_many, on_click=confirm_bulk, args=(expected,),
                  help="Never includes uncertain, possible-blast, hairy-flagged or rejected cells: review those one "
                       "by one. All or nothing: if any of them changed since this page showed it, none is confirmed.")
    # the versions this reviewer opened where they opened a cell, else as this page shows it
    shown = {c.id: seen.get(c.id, c.version) for c in case.cells}
    with c2:
        sign_off_box(shown)
    blockers = caserules.sign_off_blockers(case)
    if blockers:
        st.caption("Sign-off needs: " + "; ".join(blockers) + ". Rejected images need no review: they stay out of "
                   "the differential.")
elif signed:
    st.success(f"Signed off by {signer} on {case.signed_at:%Y-%m-%d %H:%M} UTC. "
               "Reopen it to change cells (the reopening is audited).")
    if case.signature:
        st.caption("Signature: " + signature_text(case.signature))
    if who.can("reopen"):
        st.text_input("Reason for reopening", key=f"reopen_reason_{case.id}")
        st.button("Reopen case", key="reopen", on_click=reopen)

st.markdown("#### Audit trail")
audit = store.audit(case.id)
st.dataframe(pd.DataFrame(audit), hide_index=True, width="stretch")
