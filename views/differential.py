import pandas as pd
import plotly.express as px
import streamlit as st

import appkit
from bmcore import caserules
from bmcore.report import blast_text, case_differential, case_hairy

st.title("Differential count")
appkit.ruo_banner()
case = appkit.active_case()
if case is None:
    st.stop()
appkit.job_banner(case)
d = case_differential(case)
summ = caserules.summary(case)
st.write(f"Case **{case.case_code}** · {d.denominator} cells in the count · {summ.reviewed} of "
         f"{summ.classified} classified cells reviewed. Reviewer corrections are included as they are saved. "
         f"Model: {appkit.case_model(case)}.")
if d.denominator:
    df = pd.DataFrame(d.table())
    fig = px.bar(df, x="class", y="percent", text="count", hover_data=["name"],
                 labels={"percent": "% of counted cells", "class": ""})
    fig.update_layout(height=360, margin=dict(t=10, b=10))
    st.plotly_chart(fig, width="stretch")
    st.dataframe(df, hide_index=True, width="stretch",
                 column_config={"percent": st.column_config.NumberColumn("%", format="%.1f")})
else:
    st.info("No cells count towards the differential yet.")
if d.excluded:
    st.caption("Left out of the denominator: " + ", ".join(f"{k}: {v}" for k, v in d.excluded.items())
               + ". Artefacts, smudge and not-identifiable cells are not part of a differential; uncertain and "
                 "flagged cells (possible blasts, hairy-cell flags) count once a reviewer resolves them; images the model's gate rejected as not a recognisable cell "
                 "crop count only if a reviewer gives them a label.")
c1, c2, c3 = st.columns(3)
c1.metric("M:E ratio", f"{d.me_ratio:.2f}" if d.me_ratio is not None else "n/a", help=d.me_note)
c1.caption(d.me_note)
c2.metric("Blasts", f"{d.blast_percent:.1f}%" if d.blast_percent is not None else "n/a")
c2.caption(blast_text(case, d))
# hairy cells: counted from the reviewers' labels (the model's flags beside them), as in the report
hairy = case_hairy(case, d)
c3.metric("Hairy cells (HAC)", hairy.counted if hairy.available else "unavailable", help=hairy.text)
c3.caption(hairy.text)
for n in d.notes:
    if not n.startswith(caserules.HAIRY_UNAVAILABLE):  # said once, above
        st.caption(n)
