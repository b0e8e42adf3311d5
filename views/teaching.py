"""Teaching: an instructor builds proficiency quizzes from the lab's signed cells, publishes them, and reads the
results per quiz and per learner (bmcore/quiz.py; docs/teaching.md)."""

import io
import random

import pandas as pd
import streamlit as st

import appkit
from bmcore.cases import CaseError
from bmcore.quiz import ADJACENT_PAIRS, DIFFICULTIES, QUIZ_MAX_CELLS, TIME_LIMIT_MAX
from bmcore.tasks import TASKS, cell_name
from bmcore.text import md

who = appkit.restricted_page("Teaching", "teach", "Building quizzes and reading learners' results needs the "
                                                  "pathologist or admin role.")
store = appkit.get_store()
if msg := st.session_state.pop("teach_msg", None):
    getattr(st, msg[0])(msg[1])

build, results, learners = st.tabs(["Build a quiz", "Quizzes and results", "Learners"])

# -- build ----------------------------------------------------------------------------------------------------
with build:
    pool = store.quiz_cell_pool(who)
    if not pool:
        st.info("No signed cell to build a quiz from yet: quizzes use the cells of signed-off cases (never a demo).")
    else:
        st.write(f"{len(pool)} cells of {len({c['case'] for c in pool})} signed case(s) can be used (demo cases "
                 "never). A learner sees only the images, in an order of their own, with nothing identifying.")
        order = list(TASKS["bm21"].classes)
        labels = sorted({c["expert"] for c in pool}, key=lambda k: order.index(k) if k in order else 99)
        counts = pd.Series([c["expert"] for c in pool]).value_counts()
        cases = sorted({c["case"] for c in pool})
        f1, f2 = st.columns(2)
        pick_cases = f1.multiselect("From these cases (none: all)", cases, key="tq_cases")
        pick_classes = f2.multiselect("Of these signed classes (none: all)", labels, key="tq_classes",
                                      format_func=lambda k: f"{k} {cell_name(k)} ({counts.get(k, 0)})")
        diff = st.radio("Difficulty", list(DIFFICULTIES), format_func=DIFFICULTIES.get, key="tq_difficulty",
                        horizontal=True)
        chosen = [c for c in pool if (not pick_cases or c["case"] in pick_cases)
                  and (not pick_classes or c["expert"] in pick_classes) and (diff == "any" or c[diff])]
        if not chosen:
            st.warning("No signed cell matches these choices.")
        else:
            most = min(len(chosen), QUIZ_MAX_CELLS)
            if st.session_state.get("tq_n", 0) > most:  # fewer cells match the choices now than were asked for
                st.session_state["tq_n"] = most
            n = st.number_input("Cells in the quiz", 1, most,
                                min(len(chosen), 20), key="tq_n",
                                help="Drawn at random among the matching cells, spread over their classes.")
            seed = st.session_state.setdefault("tq_seed", 0)
            # spread over the classes: one of each class in turn, each class's cells in a random order
            rng = random.Random(seed)
            by = {}
            for c in sorted(chosen, key=lambda c: c["cell_id"]):
                by.setdefault(c["expert"], []).append(c)
            for v in by.values():
                rng.shuffle(v)
            drawn = []
            while len(drawn) < n:
                for k in list(by):
                    if by[k] and len(drawn) < n:
                        drawn.append(by[k].pop())
            in_quiz = sorted({c["expert"] for c in drawn}, key=lambda k: order.index(k) if k in order else 99)
            # offered by default: the classes drawn and their neighbouring maturation stages, so that the distinction
            # a tolerant score forgives is still asked
            near = {b for a, b in ADJACENT_PAIRS if a in in_quiz} | {a for a, b in ADJACENT_PAIRS if b in in_quiz}
            default_offered = sorted(set(in_quiz) | near, key=lambda k: order.index(k) if k in order else 99)
            st.button("Draw other cells", key="tq_redraw", on_click=lambda: st.session_state.update(tq_seed=seed + 1))
            tally = ", ".join(f"{k} {sum(c['expert'] == k for c in drawn)}" for k in in_quiz)
            with st.expander(f"The {len(drawn)} cells drawn, with their signed labels ({tally})"):
                images = store.quiz_cell_images(who, [c["cell_id"] for c in drawn])
                for row in range(0, len(drawn), 8):
                    for col, c in zip(st.columns(8), drawn[row: row + 8]):
                        col.image(images[c["cell_id"]], width="stretch")
                        col.caption(f"{c['expert']} · {md(c['case'])}" + (" · model differed"
                                                                            if c["model_disagreed"] else ""))
            with st.form("tq_form"):
                title = st.text_input("Title", key="tq_title", placeholder="e.g. Granulocytic maturation, week 3")
                offered = st.multiselect(
                    "Classes offered to the learner (every class drawn must be among them; add others as "
                    "distractors)", order, default=default_offered, key="tq_offered",
                    format_func=lambda k: f"{k} {cell_name(k)}")
                limit = st.number_input("Time limit, minutes (0: none)", 0, TIME_LIMIT_MAX, 0, key="tq_limit")
                publish = st.checkbox("Publish to learners now", value=True, key="tq_publish")
                if st.form_submit_button("Make the quiz", type="primary"):
                    try:
                        qid = store.create_quiz(
                            who, title, [c["cell_id"] for c in drawn], offered,
                            time_limit_minutes=int(limit) or None, publish=publish,
                            selection={"cases": pick_cases, "classes": pick_classes, "difficulty": diff,
                                       "matching": len(chosen), "drawn": len(drawn)})
                        st.session_state["teach_msg"] = ("success", f"Quiz {md(title)} made ({len(drawn)} cells)" +
                                                         (" and published." if publish else "; not published yet."))
                        st.session_state["tq_view"] = qid
                        st.rerun()
                    except CaseError as exc:
                        st.error(f"Not made: {md(exc)}")

# -- results --------------------------------------------------------------------------------------------------
with results:
    quizzes = store.list_quizzes(who)
    if not quizzes:
        st.info("No quiz yet.")
    else:
        names = {q["id"]: f"{q['title']} · {q['cells']} cells" for q in quizzes}
        if st.session_state.get("tq_view") not in names:
            st.session_state["tq_view"] = quizzes[0]["id"]
        qid = st.selectbox("Quiz", list(names), format_func=names.get, key="tq_view")
        q = next(x for x in quizzes if x["id"] == qid)

        def set_state(**kw) -> None:
            try:
                store.set_quiz_state(appkit.actor(), qid, **kw)
            except CaseError as exc:
                st.session_state["teach_msg"] = ("error", f"Not changed: {md(exc)}")

        b1, b2, _ = st.columns([1, 1, 3])
        if not q["published"]:
            b1.button("Publish", key="tq_pub", on_click=set_state, kwargs={"published": True})
            b1 = b2
        b1.button("Reopen" if q["closed"] else "Close (no new attempt)", key="tq_close", on_click=set_state,
                  kwargs={"closed": not q["closed"]})
        rep = store.quiz_report(who, qid)
        att = rep["attempts"]
        st.caption(f"**{'Closed' if q['closed'] else 'Published' if q['published'] else 'Not published'}** · "
                   f"Classes offered: {', '.join(q['classes'])} · time limit "
                   f"{q['time_limit_minutes'] or 'none'} · made by {md(q['created_by'])} on "
                   f"{q['created_at']:%Y-%m-%d %H:%M} UTC" +
                   (f" · in progress: {', '.join(map(md, rep['in_progress']))}" if rep["in_progress"] else ""))
        if not att:
            st.info("Nobody has submitted this quiz yet.")
        else:
            m = rep["model"]
            st.markdown(f"**{len(att)} learner(s) submitted.** The model on the same cells: "
                        f"{appkit._pct(m['strict_score'])} strict, {appkit._pct(m['tolerant_score'])} tolerant, "
                        f"kappa {appkit._kappa(m['kappa'])}.")
            st.dataframe(pd.DataFrame([{"learner": a["name"], "submitted": a["submitted_at"],
                                        "answered": a["grade"]["answered"], "strict": a["grade"]["strict_score"],
                                        "tolerant": a["grade"]["tolerant_score"], "kappa": a["grade"]["kappa"]}
                                       for a in att]), hide_index=True, width="stretch",
                         column_config={**{k: st.column_config.NumberColumn(format="percent")
                                           for k in ("strict", "tolerant")},
                                        "kappa": st.column_config.NumberColumn(format="%.2f")})
            per = pd.DataFrame([{"class": r["class"], "learner": f"{a['name']} ({a['username']})",
                                 "sensitivity": r["sensitivity"]} for a in att for r in a["grade"]["per_class"]])
            st.markdown("**Per class** (strict sensitivity of each learner; the class's mean first)")
            table = per.pivot_table(index="class", columns="learner", values="sensitivity")
            table.insert(0, "mean", table.mean(axis=1))
            st.dataframe(table.sort_values("mean"), width="stretch",
                         column_config={c: st.column_config.NumberColumn(format="percent") for c in table.columns})
            st.markdown("**The cells most of the class got wrong**")
            hard = [c for c in rep["cells"] if c["wrong"]]
            if not hard:
                st.success("Every learner answered every cell right.")
            for row in range(0, min(len(hard), 16), 8):
                for col, c in zip(st.columns(8), hard[row: row + 8]):
                    col.image(c["image"], width="stretch")
                    col.caption(f"{c['wrong']} of {c['learners']} wrong · signed {c['expert']} · most said "
                                f"{c['most_given_instead']} · model {c['model']} · {md(c['case'])}")
            graded = [store.quiz_result(who, qid, a["user_id"]) for a in att]
            buf = io.StringIO()
            pd.DataFrame([{"learner": a["username"], "name": a["name"], "submitted": a["submitted_at"],
                           "cell": c["number"], "quiz_position": c["position"], "answer": c["answer"],
                           "signed": c["expert"], "model": c["model"], "strict": c["strict"],
                           "tolerant": c["tolerant"]} for a in graded for c in a["cells"]]).to_csv(buf, index=False)
            st.download_button("All answers (CSV)", buf.getvalue(), file_name=f"quiz-{qid}-answers.csv",
                               mime="text/csv", key="tq_csv")
            pick = st.selectbox("One learner's result", [a["user_id"] for a in att], index=None,
                                format_func=lambda u: next(a["name"] for a in att if a["user_id"] == u),
                                placeholder="Choose a learner…", key="tq_one")
            if pick is not None:
                one = store.quiz_result(who, qid, pick)
                appkit.quiz_scores(one)
                appkit.quiz_wrong_cells(one)
        with st.expander("Audit: who made, published and took this quiz"):
            st.dataframe(pd.DataFrame(store.quiz_events(who, qid)), hide_index=True, width="stretch")

# -- learners -------------------------------------------------------------------------------------------------
with learners:
    people = store.quiz_learners(who)
    if not people:
        st.info("Nobody has submitted a quiz yet.")
    else:
        uid = st.selectbox("Learner", [p["user_id"] for p in people], key="tq_learner",
                           format_func=lambda u: next(f"{p['name']} ({p['attempts']} quiz(zes))" for p in people
                                                      if p["user_id"] == u))
        hist = store.learner_history(who, uid)
        if len(hist) > 1:
            st.line_chart(pd.DataFrame([{"submitted": h["submitted_at"], "strict": h["grade"]["strict_score"],
                                         "tolerant": h["grade"]["tolerant_score"]} for h in hist])
                          .set_index("submitted"), y_label="score", x_label="submitted")
        st.dataframe(pd.DataFrame([{"submitted": h["submitted_at"], "quiz": h["title"], "cells": h["grade"]["n"],
                                    "strict": h["grade"]["strict_score"], "tolerant": h["grade"]["tolerant_score"],
                                    "kappa": h["grade"]["kappa"]} for h in hist]), hide_index=True, width="stretch",
                     column_config={**{k: st.column_config.NumberColumn(format="percent") for k in ("strict", "tolerant")},
                                    "kappa": st.column_config.NumberColumn(format="%.2f")})
        appkit.quiz_classes_over_time(hist)
