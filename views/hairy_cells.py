import streamlit as st

import appkit
from bmcore import caserules
from bmcore.tasks import HAIRY_CELL_CODE
from bmcore.text import md

st.title("Hairy-cell screen")
appkit.ruo_banner()
case = appkit.active_case()
if case is None:
    st.stop()
# a case is screened by the model that classified it, whatever the sidebar offers for new cases
available, how = caserules.hairy_screening(case)
if not available:
    st.info(f"**{how}** Screening needs a case classified by a model trained on the `hcl7` classes (HAC, BAS, MON, "
            "LYT, EOS, NGS, NGB) or on `bm14`/`bm21` with HAC images.")
    st.stop()
appkit.job_banner(case)
# the same cells the Classify and Differential pages count (caserules): classified by the model, gate passed
counted = [c for c in case.cells if caserules.status(c) == caserules.OK]
flagged = [c for c in counted if c.hairy_flag]
rejected_flagged = [c for c in case.cells if caserules.status(c) == caserules.REJECTED and c.hairy_flag]
if flagged:
    st.error(f"🚩 **{len(flagged)} suspected hairy cell(s)** in case {md(case.case_code)}: "
             f"{100 * len(flagged) / max(1, len(counted)):.1f}% of {len(counted)} classified cells had calibrated "
             "P(HAC) at or above the flag threshold when classified. Review each one below and on the **Review** "
             "page.")
else:
    st.success(f"No cell of case {md(case.case_code)} reached the hairy-cell flag threshold.")
if rejected_flagged:
    st.warning(f"{len(rejected_flagged)} image(s) that the model's gate would not judge (unlike its training crops) also "
               "reached the threshold (not counted above): "
               + ", ".join(f"#{c.position + 1}" for c in rejected_flagged) + ". Check them on the **Review** page.")
st.caption(f"{how} Model: {appkit.case_model(case)}.")
cols = st.columns(6)
for i, c in enumerate(sorted(flagged, key=lambda c: -(c.probabilities or {}).get(HAIRY_CELL_CODE, 0))):
    p = (c.probabilities or {}).get(HAIRY_CELL_CODE, 0)
    if c.thumbnail:
        cols[i % 6].image(c.thumbnail, caption=f"#{c.position + 1} P(HAC)={p:.2f} → {c.label}", width="stretch")
