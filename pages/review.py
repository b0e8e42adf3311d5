import pandas as pd
import streamlit as st

import appkit
from bmcore.cases import STATUS_SIGNED, CaseError, ConflictError
from bmcore.tasks import TASKS, cell_name

st.title("Review and sign-off")
appkit.ruo_banner()
store = appkit.get_store()

cases = store.list_cases()
with st.expander(f"All cases ({len(cases)})", expanded=False):
    if cases:
        st.dataframe(pd.DataFrame(cases).drop(columns=["id"]), hide_index=True, width="stretch")
if "reviewer" not in st.session_state:
    st.session_state["reviewer"] = ""
st.session_state["_w_reviewer"] = st.session_state["reviewer"]
who = st.text_input("Your name (recorded with every change)", key="_w_reviewer",
                    on_change=lambda: st.session_state.update(reviewer=st.session_state["_w_reviewer"]))
st.session_state["reviewer"] = who
case = appkit.active_case()
if case is None:
    st.stop()


def act(fn, *args, ok_msg: str = "", advance: bool = False, **kw):
    try:
        fn(*args, **kw)
        if advance:  # go on to the next unresolved cell (the queue puts them first)
            st.session_state.pop("review_cell", None)
    except ConflictError as exc:
        st.session_state["review_msg"] = ("warning", f"Not saved: {exc}")
    except CaseError as exc:
        st.session_state["review_msg"] = ("error", str(exc))
    else:
        st.session_state["review_msg"] = ("success", ok_msg)
    st.rerun()


kind, msg = st.session_state.pop("review_msg", (None, None))
if msg:
    getattr(st, kind)(msg)

ok = [c for c in case.cells if c.ok]
rejected = [c for c in ok if c.rejected and not c.reviewed]  # excluded unless a reviewer labels them
unreviewed = [c for c in ok if not c.reviewed and not c.rejected]
open_unc = [c for c in unreviewed if c.uncertain]
signed = case.status == STATUS_SIGNED
st.subheader(f"Case {case.case_code}: " + (f"signed off by {case.signed_by}" if signed else "open"))
m1, m2, m3, m4 = st.columns(4)
m1.metric("Reviewed", f"{len(ok) - len(unreviewed) - len(rejected)} / {len(ok) - len(rejected)}")
m2.metric("Uncertain, unresolved", len(open_unc))
m3.metric("Rejected (not a cell crop)", len(rejected),
          help="Refused by the model's quality / out-of-distribution gate; left out of the differential unless you "
               "give them a label here")
m4.metric("Unreadable files", len(case.cells) - len(ok))

if not signed and ok:
    st.markdown("#### Review a cell")
    queue = open_unc + [c for c in unreviewed if not c.uncertain] + rejected + [c for c in ok if c.reviewed]
    labels = {c.id: (f"#{c.position + 1} {c.name} — model: {c.predicted} ({c.confidence:.2f})"
                     + (f" · REJECTED: {c.reject_reason}" if c.rejected and not c.reviewed else
                        " · UNCERTAIN" if c.uncertain and not c.reviewed else "")
                     + (f" · reviewed: {c.final_label} by {c.reviewed_by}" if c.reviewed else "")) for c in queue}
    cid = st.selectbox("Cell (uncertain first, then unreviewed)", list(labels), format_func=labels.get,
                       key="review_cell")
    cell = next(c for c in ok if c.id == cid)
    left, right = st.columns([1, 2])
    data = appkit.image_bytes(case.id, cell)
    if data:
        left.image(data, width="stretch")
    if cell.rejected and not cell.reviewed:
        right.warning(f"The model's gate rejected this image: {cell.reject_reason}. It is left out of the "
                      "differential; give it a label only if it is a single bone marrow cell you can classify.")
    top = sorted((cell.probabilities or {}).items(), key=lambda kv: -kv[1])[:3]
    right.write("Model: " + " · ".join(f"**{k}** {cell_name(k)} {v:.2f}" for k, v in top))
    model_classes = list(case.model_classes or [])
    task_classes = [c for c in TASKS["bm21"].classes if c not in model_classes]
    options = model_classes + task_classes
    new = right.selectbox("Label", options, index=options.index(cell.label) if cell.label in options else 0,
                          format_func=lambda c: f"{c} {cell_name(c)}" + ("" if c in model_classes else " (not a model class)"),
                          key=f"label_{cell.id}")
    b1, b2 = right.columns(2)
    if b1.button("Confirm model's label", key="confirm_btn", disabled=cell.reviewed and cell.label == cell.predicted):
        act(store.review_cell, cell.id, who, cell.predicted, expected_version=cell.version, advance=True,
            ok_msg=f"#{cell.position + 1} confirmed as {cell.predicted}.")
    if b2.button("Save label", key="save_btn", type="primary"):
        act(store.review_cell, cell.id, who, new, expected_version=cell.version, advance=True,
            ok_msg=f"#{cell.position + 1} set to {new} ({cell_name(new)}).")

    st.markdown("#### Whole case")
    c1, c2 = st.columns(2)
    n_conf = sum(1 for c in unreviewed if not c.uncertain)
    if c1.button(f"Confirm the {n_conf} confident unreviewed cell(s)", disabled=n_conf == 0, key="confirm_all"):
        act(store.confirm_all, case.id, who, ok_msg=f"{n_conf} cells confirmed.")
    if c2.button("Sign off case", type="primary", key="sign_off"):
        act(store.sign_off, case.id, who, ok_msg=f"Case {case.case_code} signed off.")
    if open_unc or unreviewed:
        st.caption("Sign-off needs every readable cell reviewed, uncertain ones included. Rejected images need no "
                   "review: they stay out of the differential.")
elif signed:
    st.success(f"Signed off by {case.signed_by} on {case.signed_at:%Y-%m-%d %H:%M} UTC. "
               "Reopen it to change cells (the reopening is audited).")
    reason = st.text_input("Reason for reopening", key="reopen_reason")
    if st.button("Reopen case", key="reopen"):
        act(store.reopen, case.id, who, reason, ok_msg=f"Case {case.case_code} reopened.")

st.markdown("#### Audit trail")
audit = store.audit(case.id)
st.dataframe(pd.DataFrame(audit), hide_index=True, width="stretch")
