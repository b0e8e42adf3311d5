import os

import pandas as pd
import streamlit as st

import appkit
from bmcore import learnjob
from bmcore.cases import CaseError, ConflictError
from bmcore.governance import SHIPPED, criteria_text
from bmcore.tasks import cell_name
from bmcore.text import md

who = appkit.restricted_page("Model updates", "models", "Model updates are for admins.")
store = appkit.get_store()

learnjob.collect(store)  # a job that finished since the last draw: its candidate is registered once
active = store.active_model()
expected = store.active_event_id()  # sent back with an approval or restore: a colleague's in between is refused
shipped = appkit.shipped_default()
st.markdown(f"**Model for new cases:** {md(active['name']) if active else md(shipped.name) + ' (' + SHIPPED + ')'}"
            + (f", {active['action']} by {md(active['who'])} on {active['at']:%Y-%m-%d %H:%M} UTC" if active else ""))
st.caption("Cases keep the model that classified them; a change here applies to cases classified from now on (an "
           "open session follows it at its next step, unless its user picked another model in the sidebar). The "
           "shipped default is never overwritten and can always be restored.")


def _say(kind: str, text: str) -> None:
    st.session_state["models_msg"] = (kind, text)


# Callbacks run before the next script run, with the values this draw gave them: ``shown`` is the approval or restore
# in force as this page showed it, so a colleague's in between is refused, not silently built upon.
def _act(verb: str, do, done: str, pw_key: str) -> None:
    """Run an approval or restore; its answer is said at the top of the next draw; the password box is emptied."""
    try:
        do(st.session_state.get(pw_key))
    except ConflictError as exc:
        _say("warning", f"Not {verb}: {md(exc)}")
    except CaseError as exc:
        _say("error", f"Not {verb}: {md(exc)}")
    else:
        _say("success", done)
    st.session_state[pw_key] = ""


def approve(cand_id: int, name: str, shown: int) -> None:
    _act("approved", lambda pw: store.approve(cand_id, appkit.actor(), password=pw, expected_active=shown,
                                              approved_dir=learnjob.approved_dir()),
         f"{md(name)} is now the model for new cases.", f"approve_pw_{cand_id}")


def restore(names: dict, shown: int) -> None:
    pick = st.session_state.get("restore_pick")
    _act("restored", lambda pw: store.restore(appkit.actor(), password=pw, expected_active=shown, approval_id=pick),
         f"{md(names[pick])} is the model for new cases again.", "restore_pw")


if msg := st.session_state.pop("models_msg", None):
    getattr(st, msg[0])(msg[1])

st.markdown("#### Learn a candidate from the lab's signed cases")
base = appkit.default_bundle_path()
summary = learnjob.data_summary(store, appkit.installed_bundles().get(base, {}).get("task", "bm14"))
st.write(f"{summary['cells']} signed cells of {summary['cases']} signed case(s) of the lab's own (demo cases never; "
         "dismissed images and refused images nobody labelled never): "
         + (", ".join(f"{k} {n}" for k, n in sorted(summary["per_class"].items(), key=lambda kv: -kv[1])) or "none")
         + ".")
job = learnjob.current(store)
if job and job["running"]:
    @st.fragment(run_every=3.0)
    def progress() -> None:
        j = learnjob.current(store)
        if not j or not j["running"]:
            st.rerun()
        st.info(f"Learning **{md(j['event']['name'])}**: {md(j['status'].get('step', 'starting'))} (started by "
                f"{md(j['event']['who'])} at {j['event']['at']:%H:%M} UTC). You can leave this page.")
    progress()
    if st.button("Cancel the learning job", key="learn_cancel"):
        try:
            learnjob.cancel(store, who)
        except CaseError as exc:
            _say("error", md(exc))
        else:
            _say("info", "Cancelled: nothing it wrote is registered.")
        st.rerun()
else:
    if summary["refusal"]:
        st.warning("Not enough to learn from yet: " + md(summary["refusal"]) + ".")
    st.caption("The job holds a fifth of the cases out as the lab's test set (by case), fine-tunes from the model for "
               "new cases with the reference training crops replayed, refits calibration, the gate and the review rule "
               "on the lab's data, and measures both models on the held-out cases. About 5 minutes on 2 CPU cores for "
               "840 cells of classes it knows, up to 11 minutes when it adds a class (docs/learning.md). The acceptance criteria are fixed before it starts.")
    if st.button("Learn a candidate", key="learn_start", type="primary", disabled=bool(summary["refusal"])):
        try:
            learnjob.start(store, who, base_path=base, db_url=store.url,
                           extra_args=tuple(os.environ.get("BM_LEARN_ARGS", "").split()))
        except CaseError as exc:
            _say("error", md(exc))
        else:
            _say("success", "Learning started in the background.")
        st.rerun()

st.markdown("#### Candidates")
cands = store.candidates()
if not cands:
    st.caption("None yet.")
for c in cands:
    d = c["detail"]
    cur, new = d["figures"]["current"], d["figures"]["candidate"]
    with st.container(border=True):
        st.markdown(f"**{md(c['name'])}** (weights {c['sha256'][:8]}), learnt from {md(cur['model'])}, registered "
                    f"{c['at']:%Y-%m-%d %H:%M} UTC")
        rows = []
        for label, key in (("lab test (held-out cases)", "lab_test"), ("reference test split", "reference_test")):
            if cur.get(key) and new.get(key):
                rows.append({"data": label, "cells": new[key]["cells"],
                             "macro-F1 now": round(cur[key]["macro_f1"], 3),
                             "macro-F1 candidate": round(new[key]["macro_f1"], 3),
                             "refused now": f"{cur[key]['refusal']:.1%}", "refused candidate": f"{new[key]['refusal']:.1%}"})
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        per = new["lab_test"]["per_class_f1"]
        st.dataframe(pd.DataFrame([{"class": k, "cell type": cell_name(k), "lab-test cells": new["lab_test"]
                                    ["per_class_cells"].get(k, 0), "F1 now": round(cur["lab_test"]["per_class_f1"]
                                                                                    .get(k, 0.0), 3),
                                    "F1 candidate": round(v, 3)} for k, v in per.items()]), hide_index=True)
        st.caption("Macro-F1 counts the gate's refusals as errors. The lab test cases never trained, calibrated or "
                   "selected either model.")
        if d["failures"]:
            st.error("Fails its acceptance criteria, so it cannot be approved: " + md("; ".join(d["failures"])) + ".")
        else:
            st.success("Meets every acceptance criterion: " + md(criteria_text(d["criteria"])) + ".")
        if active and active["sha256"] == c["sha256"]:
            st.caption("In force for new cases.")
            continue
        with st.form(f"approve_{c['id']}", border=False):
            st.text_input("Your password, to approve", type="password", key=f"approve_pw_{c['id']}")
            st.form_submit_button("Approve for new cases", disabled=bool(d["failures"]), type="primary",
                                  on_click=approve, args=(c["id"], c["name"], expected))

approvals = [e for e in store.model_events() if e["action"] == "approved"]
if approvals or active:
    st.markdown("#### Restore an earlier model")
    options = [None] + [e["id"] for e in approvals]
    names = {None: f"{shipped.name} ({SHIPPED})", **{e["id"]: f"{e['name']} (weights {e['sha256'][:8]}, approved by "
                                                           f"{e['who']} {e['at']:%Y-%m-%d})" for e in approvals}}
    with st.form("restore", border=False):
        st.selectbox("Model", options, format_func=names.get, key="restore_pick")
        st.text_input("Your password, to restore", type="password", key="restore_pw")
        st.form_submit_button("Restore for new cases", on_click=restore, args=(names, expected))

st.markdown("#### Every step")
events = store.model_events()
st.dataframe(pd.DataFrame([{"when (UTC)": e["at"], "who": e["who"], "what": e["action"], "model": e["name"],
                            "weights": e["sha256"][:8]} for e in events]) if events else pd.DataFrame(),
             hide_index=True, width="stretch")
