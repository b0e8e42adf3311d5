import pandas as pd
import plotly.express as px
import streamlit as st

import appkit
from bmcore import caserules
from bmcore.report import blast_text, case_differential, case_hairy
from bmcore.text import md

st.title("Differential count")
appkit.ruo_banner()
case = appkit.active_case()
if case is None:
    st.stop()
appkit.job_banner(case)
d = case_differential(case)
summ = caserules.summary(case)
st.write(f"Case **{md(case.case_code)}** · {d.denominator} cells in the count · {summ.reviewed} of "
         f"{summ.classified} classified cells reviewed. Reviewer corrections are included as they are saved. "
         f"Model: {appkit.case_model(case)}.")
if d.pending:
    st.warning(f"**{d.pending} cell(s) await review, {d.pending_blasts} of them possible blasts.** No percentage is "
               "final until they are resolved on the **Review** page: each is shown as the range it can still take "
               "(from none to all of the pending cells being of that class).")
table = d.table()
if table:
    df = pd.DataFrame(table)
    # bars are counts (on a count axis): a percentage bar would read as final while cells are pending
    fig = px.bar(df, x="class", y="count", text="count", hover_data=["name", "percent_text"],
                 labels={"count": "cells counted", "class": "", "percent_text": "% of counted cells"})
    fig.update_layout(height=360, margin=dict(t=10, b=10))
    st.plotly_chart(fig, width="stretch")
    st.dataframe(df[["class", "name", "count", "percent_text"]], hide_index=True, width="stretch",
                 column_config={"percent_text": st.column_config.TextColumn(
                     "% of counted cells" + (" (range while cells are pending)" if d.pending else ""))})
else:
    st.info("No cells count towards the differential yet.")
if d.excluded:
    st.caption("Left out of the denominator: " + ", ".join(f"{k}: {v}" for k, v in d.excluded.items())
               + ". Artefacts, smudge and not-identifiable cells are not part of a differential; uncertain and "
                 "flagged cells (possible blasts, hairy-cell flags) count once a reviewer resolves them; images the "
                 "model's gate would not judge count once a reviewer gives them a class, and not at all if dismissed.")
c1, c2, c3 = st.columns(3)
c1.metric("M:E ratio", f"{d.me_ratio:.2f}" + (" (provisional)" if "provisional" in d.me_note else "")
          if d.me_ratio is not None else "n/a", help=d.me_note)
c1.caption(d.me_note)
if d.blast_percent is not None:
    c2.metric("Blasts", f"{d.blast_percent:.1f}%")
elif d.blast_range is not None:
    c2.metric("Blasts", "pending", delta=f"{d.pending_blasts} possible blast(s) to review", delta_color="off",
              delta_arrow="off")
else:
    c2.metric("Blasts", "n/a")
c2.caption(blast_text(case, d))
# hairy cells: counted from the reviewers' labels (the model's flags beside them), as in the report
hairy = case_hairy(case, d)
c3.metric("Hairy cells (HAC)", hairy.counted if hairy.available else "unavailable", help=hairy.text)
c3.caption(hairy.text)
for n in d.notes:
    if not n.startswith(caserules.HAIRY_UNAVAILABLE):  # said once, above
        st.caption(n)
appkit.code_key([t["class"] for t in table] + sorted(set(case.model_classes or [])))
