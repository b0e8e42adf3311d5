import streamlit as st

import appkit
from bmcore.tasks import HAIRY_CELL_CODE

st.title("Hairy-cell screen")
appkit.ruo_banner()
pred = appkit.predictor()
if HAIRY_CELL_CODE not in pred.classes:
    st.info(
        f"**Hairy-cell screening is not available with this model.** `{pred.bundle.name}` was not trained on "
        "hairy cells (HAC): no hairy-cell images were available to train it, so it cannot flag them and no flag "
        "here does **not** mean no hairy cells. Screening needs a model trained on the `hcl7` classes (HAC, BAS, "
        "MON, LYT, EOS, NGS, NGB) or on `bm14`/`bm21` with HAC images; train one with `train/` and pick it in the "
        "sidebar.")
    st.stop()
case = appkit.active_case()
if case is None:
    st.stop()
ok = [c for c in case.cells if c.label is not None]  # readable, and not rejected by the gate (unless relabelled)
flagged = [c for c in ok if c.hairy_flag]
rejected_flagged = [c for c in case.cells if c.ok and c.label is None and c.hairy_flag]
thr = st.session_state["hairy_threshold"]
if flagged:
    st.error(f"🚩 **{len(flagged)} suspected hairy cell(s)** in case {case.case_code}: "
             f"{100 * len(flagged) / max(1, len(ok)):.1f}% of {len(ok)} classified cells had calibrated P(HAC) at or "
             f"above the flag threshold when classified. Review each one below and on the **Review** page.")
else:
    st.success(f"No cell of case {case.case_code} reached the hairy-cell flag threshold.")
if rejected_flagged:
    st.warning(f"{len(rejected_flagged)} image(s) that the model's gate rejected as not a recognisable cell crop also "
               "reached the threshold (not counted above): "
               + ", ".join(f"#{c.position + 1}" for c in rejected_flagged) + ". Check them on the **Review** page.")
st.caption(f"Flag threshold for new classifications: P(HAC) ≥ {thr:.2f} (sidebar).")
cols = st.columns(6)
for i, c in enumerate(sorted(flagged, key=lambda c: -(c.probabilities or {}).get(HAIRY_CELL_CODE, 0))):
    p = (c.probabilities or {}).get(HAIRY_CELL_CODE, 0)
    if c.thumbnail:
        cols[i % 6].image(c.thumbnail, caption=f"#{c.position + 1} P(HAC)={p:.2f} → {c.label}", width="stretch")
