"""Quizzes: a learner takes a proficiency quiz built from the lab's signed cells, then reads the graded result and
their history (bmcore/quiz.py; docs/teaching.md)."""

import io

import pandas as pd
import streamlit as st

import appkit
from bmcore.cases import CaseError, ConflictError
from bmcore.db import utcnow
from bmcore.pdfreport import render_certificate
from bmcore.tasks import cell_name
from bmcore.text import md

PAGE = 20      # cells per gallery page
COLUMNS = 5

who = appkit.restricted_page("Quizzes", "quiz", "Your role cannot take quizzes.")
store = appkit.get_store()
st.write("Classify each cell as you would at the microscope. The cells are from this laboratory's signed-off cases; "
         "you see neither the model's label nor the pathologist's until you submit. Answers are saved as you go: a "
         "reload keeps them.")

if msg := st.session_state.pop("quiz_msg", None):
    getattr(st, msg[0])(msg[1])


def say(kind: str, text: str) -> None:
    st.session_state["quiz_msg"] = (kind, text)


try:
    quizzes = store.list_quizzes(who)
except CaseError as exc:
    st.error(md(exc))
    st.stop()
open_quizzes = [q for q in quizzes if q["published"]]
if not open_quizzes:
    st.info("No quiz is published yet. An instructor builds one on the **Teaching** page.")
    st.stop()


def status_text(q: dict) -> str:
    a = q["attempt"]
    if a is None:
        return "closed" if q["closed"] else "not started"
    if a["submitted_at"]:
        return f"submitted {a['submitted_at']:%Y-%m-%d}"
    return f"in progress, {len(a['answers'])} of {q['cells']} answered"


names = {q["id"]: f"{q['title']} · {q['cells']} cells" for q in open_quizzes}
ids = list(names)
if st.session_state.get("quiz_pick") not in ids:
    st.session_state["quiz_pick"] = ids[0]
qid = st.selectbox("Quiz", ids, format_func=names.get, key="quiz_pick")
quiz = next(q for q in open_quizzes if q["id"] == qid)
attempt = quiz["attempt"]
limit = quiz["time_limit_minutes"]
st.caption(f"**{status_text(quiz).capitalize()}** · {quiz['cells']} cells · classes offered: {', '.join(quiz['classes'])} · "
           + (f"time limit {limit} minutes from the moment you start" if limit else "no time limit")
           + f" · made by {md(quiz['created_by'])} on {quiz['created_at']:%Y-%m-%d}")


def start() -> None:
    try:
        store.start_attempt(appkit.actor(), qid)
    except CaseError as exc:
        say("error", f"Not started: {md(exc)}")


if attempt is None:
    if quiz["closed"]:
        st.info("This quiz is closed: it cannot be started any more.")
        st.stop()
    st.button("Start the quiz" + (f" (the {limit} minutes start now)" if limit else ""), type="primary",
              key="quiz_start", on_click=start)
    st.stop()

seen_key = f"quiz_seen::{qid}"
if not attempt["submitted_at"]:
    # the version of the answers this page drew: what a save names, so another tab's save is never overwritten unseen
    st.session_state.setdefault(seen_key, attempt["version"])
    seen = st.session_state[seen_key]
    if seen != attempt["version"]:
        st.warning("Your answers changed in another tab or window since this page was drawn. They are shown as they "
                   "are now.")
        st.session_state[seen_key] = seen = attempt["version"]
    items = store.learner_items(who, qid)
    answers = attempt["answers"]
    late = attempt["deadline"] is not None and utcnow() > attempt["deadline"]
    left = (attempt["deadline"] - utcnow()).total_seconds() / 60 if attempt["deadline"] else None

    def save(move: str | None, shown: list[int]) -> None:
        ticked = [p for p in shown if st.session_state.get(f"qsel_{qid}_{p}_{seen}")]
        if move == "other":
            move = st.session_state.get(f"quiz_other_{qid}")
            if not move:
                say("warning", "Choose the class in **Another class** first; nothing was saved.")
                return
        if not ticked:
            say("warning", "Tick the cells first (Tab / Space), then press the class; nothing was saved.")
            return
        try:
            v = store.save_answers(appkit.actor(), qid, {p: move for p in ticked}, expected_version=seen)
            st.session_state[seen_key] = v
            say("success", f"{len(ticked)} cell(s) " + (f"answered {move} ({cell_name(move)})." if move else
                                                         "cleared."))
        except ConflictError as exc:
            st.session_state.pop(seen_key, None)
            say("error", f"Not saved: {md(exc)}")
        except CaseError as exc:
            say("error", f"Not saved: {md(exc)}")

    def submit() -> None:
        try:
            store.submit_attempt(appkit.actor(), qid, expected_version=seen)
            say("success", "Submitted. Your answers are graded below; they cannot be changed any more.")
        except ConflictError as exc:
            st.session_state.pop(seen_key, None)
            say("error", f"Not submitted: {md(exc)}")
        except CaseError as exc:
            say("error", f"Not submitted: {md(exc)}")

    done = sum(1 for i in items if i["position"] in answers)
    st.progress(done / len(items), text=f"{done} of {len(items)} answered" +
                ("" if left is None else " · time is up" if late else f" · about {max(left, 0):.0f} min left "
                 "(when this page was drawn)"))
    if late:
        st.warning("The time is up: no answer can be changed now. The answers saved in time count; submit them.")
    pages = max(1, -(-len(items) // PAGE))
    page = 1
    if pages > 1:
        page = st.pills("Page", list(range(1, pages + 1)), default=1, key=f"quiz_page_{qid}", required=True) or 1
    drawn = items[(page - 1) * PAGE: page * PAGE]
    shown = [i["position"] for i in drawn]
    classes = quiz["classes"]
    with st.form(f"quiz_form_{qid}_{page}", border=False):
        for row in range(0, len(drawn), COLUMNS):
            for col, it in zip(st.columns(COLUMNS), drawn[row: row + COLUMNS]):
                col.image(it["image"], width="stretch")
                given = answers.get(it["position"])
                # a toggle button, not a checkbox: the keys 1-9 then work while it has the focus (Streamlit ignores
                # shortcut keys typed in a checkbox or any other input)
                col.pills(f"Cell {it['number']}", [f"#{it['number']} · {given or '–'}"], selection_mode="multi",
                          key=f"qsel_{qid}_{it['position']}_{seen}", disabled=late, label_visibility="collapsed",
                          help=f"your answer: {given} ({cell_name(given)})" if given else "not answered yet")
        st.markdown("Answer the ticked cells with (keys 1–9):")
        quick = classes[:9]
        for col, (n, k) in zip(st.columns(max(len(quick), 1)), enumerate(quick, start=1)):
            col.form_submit_button(f"→ {k}", shortcut=str(n), help=f"{cell_name(k)} (key {n})", width="stretch",
                                   disabled=late, on_click=save, args=(k, shown))
        o1, o2, o3 = st.columns([2, 1, 2])
        o1.selectbox("Another class", classes[9:] or classes, index=None, placeholder="Another class…",
                     label_visibility="collapsed", format_func=lambda k: f"{k} {cell_name(k)}",
                     key=f"quiz_other_{qid}", disabled=late)
        o2.form_submit_button("→ that class", disabled=late, on_click=save, args=("other", shown))
        o3.form_submit_button("Clear the ticked answers", disabled=late, on_click=save, args=(None, shown))
    st.caption("Click a cell's number (or Tab to it and press Space) to tick it; 1–9 answer the ticked cells with the "
               "class on that button. Each cell shows your answer under it (– : not answered).")
    appkit.code_key(classes, "What the codes mean")
    st.divider()
    missing = len(items) - done
    sure = True
    if missing:
        sure = st.checkbox(f"I know {missing} cell(s) are not answered: they count as wrong", key=f"quiz_sure_{qid}")
    st.button("Submit my answers", type="primary", key=f"quiz_submit_{qid}", disabled=not sure, on_click=submit,
              help="Hands your answers in for grading; nothing can be changed afterwards.")
    st.stop()

# submitted: the graded result
result = store.quiz_result(who, qid)
st.subheader("Your result")
st.caption(f"Submitted {result['submitted_at']:%Y-%m-%d %H:%M} UTC. The key is the label the signing pathologist "
           "signed; the model's label is what it said when the case was classified.")
appkit.quiz_scores(result)
appkit.quiz_wrong_cells(result)
st.download_button("Certificate (PDF)", render_certificate(result, quiz), file_name=f"quiz-{qid}-certificate.pdf",
                   mime="application/pdf", key=f"quiz_cert_{qid}")

st.divider()
st.subheader("Your history")
hist = store.learner_history(who)
rows = [{"submitted": h["submitted_at"], "quiz": h["title"], "cells": h["grade"]["n"],
         "strict": h["grade"]["strict_score"], "tolerant": h["grade"]["tolerant_score"],
         "kappa": h["grade"]["kappa"], "model, strict": h["model"]["strict_score"]} for h in hist]
frame = pd.DataFrame(rows)
st.dataframe(frame, hide_index=True, width="stretch",
             column_config={**{k: st.column_config.NumberColumn(format="percent")
                               for k in ("strict", "tolerant", "model, strict")},
                            "kappa": st.column_config.NumberColumn(format="%.2f")})
if len(rows) > 1:
    st.line_chart(frame.set_index("submitted")[["strict", "tolerant"]], y_label="score", x_label="submitted")
per = [{"submitted": h["submitted_at"], "quiz": h["title"], "class": r["class"], "cells": r["cells"],
        "strict": r["sensitivity"], "tolerant": r["tolerant_sensitivity"]} for h in hist for r in h["grade"]["per_class"]]
appkit.quiz_classes_over_time(hist)
buf = io.StringIO()
pd.DataFrame(per).to_csv(buf, index=False)
st.download_button("My history (CSV, one row per quiz and class)", buf.getvalue(), file_name="quiz-history.csv",
                   mime="text/csv", key="quiz_hist_csv")
