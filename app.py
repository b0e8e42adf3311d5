"""Bone marrow cell classifier: Streamlit entry point (page config, sign-in, navigation, shared sidebar).

    make run        # or: .venv/bin/streamlit run app.py   (binds to 127.0.0.1; see README to serve a lab network)
"""

import logging
import os
import uuid

import streamlit as st

st.set_page_config(page_title="Bone marrow cell classifier", page_icon=":material/biotech:", layout="wide")

import appkit  # noqa: E402  (after set_page_config)

PAGES = [
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/classify.py", title="Classify", icon=":material/biotech:"),
    st.Page("views/hairy_cells.py", title="Hairy cells", icon=":material/flag:"),
    st.Page("views/differential.py", title="Differential", icon=":material/bar_chart:"),
    st.Page("views/review.py", title="Review", icon=":material/task_alt:"),
    st.Page("views/export.py", title="Export", icon=":material/description:"),
    st.Page("views/model_comparison.py", title="Model comparison", icon=":material/compare:"),
    st.Page("views/model_card.py", title="Model card", icon=":material/badge:"),
]
AGREEMENT_PAGES = [st.Page("views/agreement.py", title="Agreement", icon=":material/fact_check:")]
QUIZ_PAGE = st.Page("views/quizzes.py", title="Quizzes", icon=":material/school:")
TEACH_PAGES = [st.Page("views/teaching.py", title="Teaching", icon=":material/cast_for_education:")]
ADMIN_PAGES = [st.Page("views/users.py", title="Users", icon=":material/group:"),
               st.Page("views/models.py", title="Model updates", icon=":material/model_training:")]

ALL = PAGES + [QUIZ_PAGE] + AGREEMENT_PAGES + TEACH_PAGES + ADMIN_PAGES
who = appkit.login_gate(ALL)  # stops here with the sign-in form until someone is signed in
appkit.idle_watch()  # an idle session is signed out on a timer, not only at its next click
if who.can("view"):
    page = st.navigation(PAGES + [QUIZ_PAGE] + (AGREEMENT_PAGES if who.can("agreement") else [])
                         + (TEACH_PAGES if who.can("teach") else []) + (ADMIN_PAGES if who.can("users") else []),
                         expanded=True)  # an admin has 13 pages: all shown, none behind "View 3 more"
else:  # a student reads no case: the quizzes and the comparison lesson only (the store refuses the rest anyway)
    page = st.navigation([QUIZ_PAGE] + [p for p in PAGES if p.title == "Model comparison"])
st.session_state["predictor_ok"] = appkit.sidebar() is not None
try:
    page.run()
except Exception:  # st.stop / st.rerun are BaseExceptions and pass through
    if os.environ.get("BM_PAGE_ERRORS") == "raise":  # the test suite: a page error fails its test (AppTest.exception)
        raise
    # the user sees that something went wrong and an id to quote; the server's log has the traceback under that id
    # (client.showErrorDetails = "none": no traceback, path or data reaches a browser)
    error_id = uuid.uuid4().hex[:8]
    logging.getLogger("bmcore.app").exception("page error %s", error_id)
    st.error(f"Something went wrong on this page, and nothing more was done. Error id **{error_id}**: the server's "
             "log has the details. Reload the page; if it happens again, tell your administrator the id.")
st.divider()
st.caption(appkit.RUO_STATEMENT + " Data: Matek et al. 2021 bone marrow cytomorphology dataset (TCIA).")
