import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import appkit
from bmcore.agreement import REFUSED, lab_agreement
from bmcore.cases import CaseError
from bmcore.tasks import cell_name
from bmcore.text import md

who = appkit.restricted_page("Agreement on signed cases", "agreement",
                             "The lab's agreement figures are for pathologists and admins.")
try:
    a = lab_agreement(appkit.get_store(), who)
except CaseError as exc:  # the role was changed since this session signed in
    st.error(md(exc))
    st.stop()
st.caption("What the model said when it classified each cell, against the label the case was signed off with. Signed "
           "cases only, and only the lab's own: demo cases never count"
           + (f" ({a.demo_cases_left_out} signed demo case(s) left out)" if a.demo_cases_left_out else "")
           + ". Counted cells only: unreadable files and images dismissed as not cells are left out.")
if not a.cells:
    st.info("No signed case yet: the figures appear once a pathologist signs a case off.")
    st.stop()

c1, c2, c3, c4 = st.columns(4)
c1.metric("Agreement", f"{100 * a.share:.1f}%", help=a.share_text())
c2.metric("Signed cells", f"{a.cells} in {a.cases} case(s)")
c3.metric("Auto-accepted, then changed", f"{a.auto_changed} of {a.auto_accepted}",
          help="Cells nothing sent to a person (confident, no blast or hairy-cell flag) whose signed label differs "
               "from the model's: the errors the review rule let through, caught by a reviewer")
c4.metric("Refused by the gate", a.refused, help="Images the gate would not judge that a reviewer then gave a class")
st.caption(a.share_text() + ".")
for line in a.unknown_text():
    st.warning(md(line))

st.markdown("#### Per class")
st.dataframe(pd.DataFrame([{"class": r["class"], "cell type": cell_name(r["class"]), "signed cells": r["signed"],
                            "model said": r["model_said"], "precision": round(r["precision"], 3),
                            "recall": round(r["recall"], 3), "F1": round(r["f1"], 3)} for r in a.per_class]),
             hide_index=True, width="stretch")
st.caption("Recall: of the cells signed as a class, the share the model had called that class. Precision: of the "
           "cells the model called a class, the share signed as it. A class the model cannot name has recall 0.")

st.markdown("#### Confusion matrix")
rows = list(a.confusion)
cols = sorted({k for v in a.confusion.values() for k in v}, key=lambda k: (k == REFUSED, k))
z = [[a.confusion[r].get(c, 0) for c in cols] for r in rows]
fig = go.Figure(go.Heatmap(z=z, x=cols, y=rows, colorscale="Blues", text=z, texttemplate="%{text}",
                           hovertemplate="signed %{y}, model %{x}: %{z} cells<extra></extra>"))
fig.update_layout(xaxis_title="the model's label", yaxis_title="signed label", height=120 + 34 * len(rows),
                  margin=dict(l=10, r=10, t=10, b=10), yaxis_autorange="reversed")
st.plotly_chart(fig, width="stretch")

left, right = st.columns(2)
left.markdown("#### By month of sign-off")
left.dataframe(pd.DataFrame([{"month": m["month"], "cells": m["cells"], "agree": m["agree"],
                              "agreement": f"{100 * m['share']:.1f}%"} for m in a.by_month]), hide_index=True)
right.markdown("#### By model")
right.dataframe(pd.DataFrame([{"model": appkit.model_label(m["model"], m["sha256"]), "cells": m["cells"],
                               "agree": m["agree"], "agreement": f"{100 * m['share']:.1f}%"} for m in a.by_model]),
                hide_index=True)
appkit.code_key(rows + [c for c in cols if c != REFUSED])
