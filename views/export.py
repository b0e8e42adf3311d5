import streamlit as st

import appkit
from bmcore.report import case_rows, render_html_report, rows_to_csv

st.title("Export")
appkit.ruo_banner()
case = appkit.active_case()
if case is None:
    st.stop()
store = appkit.get_store()
appkit.job_banner(case)
# the model that classified the case, if it is still installed
path = appkit.case_bundle_path(case)
meta = appkit.installed_bundles().get(path, {}) if path else {}
if not meta:
    st.warning("The model that classified this case is no longer installed; the report shows its stored name and hash.")
rows = case_rows(case)
html = render_html_report(case, meta, store.audit(case.id))
if case.status != "signed":
    st.warning("This case is not signed off: exports are marked as preliminary.")
c1, c2 = st.columns(2)
c1.download_button("Download cell table (CSV)", rows_to_csv(rows), file_name=f"{case.case_code}_cells.csv",
                   mime="text/csv", key="dl_csv")
c2.download_button("Download report (HTML, printable)", html, file_name=f"{case.case_code}_report.html",
                   mime="text/html", key="dl_html")
st.caption("Open the HTML report in a browser and print it (or save as PDF).")
with st.expander("Report preview", expanded=True):
    st.iframe(html, height=700)  # every user-typed string in the report is HTML-escaped
