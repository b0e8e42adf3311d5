"""Bone marrow cell classifier: Streamlit entry point (page config, sign-in, navigation, shared sidebar).

    make run        # or: .venv/bin/streamlit run app.py   (binds to 127.0.0.1; see README to serve a lab network)
"""

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
ADMIN_PAGES = [st.Page("views/users.py", title="Users", icon=":material/group:")]

who = appkit.login_gate(PAGES + ADMIN_PAGES)  # stops here with the sign-in form until someone is signed in
page = st.navigation(PAGES + (ADMIN_PAGES if who.can("users") else []))
st.session_state["predictor_ok"] = appkit.sidebar() is not None
page.run()
st.divider()
st.caption(appkit.RUO_STATEMENT + " Data: Matek et al. 2021 bone marrow cytomorphology dataset (TCIA).")
