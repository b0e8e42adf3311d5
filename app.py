"""Bone marrow cell classifier: Streamlit entry point (page config, navigation, shared sidebar).

    make run        # or: .venv/bin/streamlit run app.py
"""

import streamlit as st

st.set_page_config(page_title="Bone marrow cell classifier", page_icon=":material/biotech:", layout="wide")

import appkit  # noqa: E402  (after set_page_config)

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/classify.py", title="Classify", icon=":material/biotech:"),
    st.Page("pages/hairy_cells.py", title="Hairy cells", icon=":material/flag:"),
    st.Page("pages/differential.py", title="Differential", icon=":material/bar_chart:"),
    st.Page("pages/review.py", title="Review", icon=":material/task_alt:"),
    st.Page("pages/export.py", title="Export", icon=":material/description:"),
    st.Page("pages/model_comparison.py", title="Model comparison", icon=":material/compare:"),
    st.Page("pages/model_card.py", title="Model card", icon=":material/badge:"),
]

page = st.navigation(PAGES)
st.session_state["predictor_ok"] = appkit.sidebar() is not None
page.run()
st.divider()
st.caption(appkit.RUO_STATEMENT + " Data: Matek et al. 2021 bone marrow cytomorphology dataset (TCIA).")
