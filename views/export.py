import streamlit as st

import appkit
from bmcore.cases import SPECIMEN_FIELDS, SPECIMEN_MAX, TARGET_MAX, TARGET_MIN, CaseError, case_details
from bmcore.casetext import signer_text
from bmcore.cellrows import rows_to_csv
from bmcore.fhirexport import LOCAL_SYSTEM, fhir_json
from bmcore.pdfreport import render_pdf_report
from bmcore.report import DEFAULT_TARGET, case_rows, render_html_report
from bmcore.text import md
from bmcore.inputs import safe_display_name

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
who = appkit.actor()
signed = case.status == "signed"
# specimen details and the target count are stored with the case and printed in every report
FORM = f"details_{case.id}_"  # the form's keys: its widgets and what it was filled from (appkit.form_source)


def details_from_store(case_id: int) -> None:
    """Fill the form from the details stored now (a button's callback: before the widgets are drawn)."""
    appkit.forget_form(f"details_{case_id}_")
    st.session_state[f"details_used_{case_id}"] = True


if who.can("classify") and not signed:
    shown = appkit.form_source(FORM, case_details(case), f"{FORM}target")
    # open while nothing was entered, and once this reviewer has used the form: a colleague's save must not fold it
    # (and the refusal in it) away
    used = st.session_state.get(f"details_used_{case.id}", False)
    with st.expander("Specimen details and target count", expanded=used or not shown["specimen"]):
        if case_details(case) != shown:  # a colleague saved this form after this one was filled: say so, keep ours
            st.warning("Someone changed these details after this form was filled in (the report below shows what is "
                       "stored now). Saving this form is refused until you load the current details.")
            st.button("Load the current details (replaces what this form holds)", key=f"details_reload_{case.id}",
                      on_click=details_from_store, args=(case.id,))
        # keyed and filled once from ``shown``: a colleague's save does not replace what this reviewer typed
        for k, _ in SPECIMEN_FIELDS:
            st.session_state.setdefault(f"{FORM}{k}", shown["specimen"].get(k, ""))
        st.session_state.setdefault(f"{FORM}target", shown["target_count"] or DEFAULT_TARGET)
        with st.form(f"details_{case.id}"):
            spec = {k: st.text_input(label, max_chars=SPECIMEN_MAX, key=f"{FORM}{k}")
                    for k, label in SPECIMEN_FIELDS}
            target = st.number_input("Target count (cells)", min_value=TARGET_MIN, max_value=TARGET_MAX, step=100,
                                     key=f"{FORM}target",
                                     help="The differential your lab counts to, e.g. 200 or 500 cells")
            if st.form_submit_button("Save details"):
                st.session_state[f"details_used_{case.id}"] = True
                try:
                    store.set_case_details(case.id, who, specimen=spec, target_count=int(target), expected=shown)
                except CaseError as exc:  # a conflict included: nothing saved, the entries stay in the form
                    st.error(f"Not saved: {md(exc)}")
                else:
                    case = store.get_case(case.id, appkit.actor())
                    st.session_state[f"{FORM}shown"] = case_details(case)
                    st.success("Saved. The reports below include them.")
users = store.list_users()
audit = store.audit(case.id, appkit.actor())
rows = case_rows(case)
html = render_html_report(case, meta, audit, users=users)
if signed:
    st.success(f"Signed off by {md(signer_text(case))}: the PDF, HTML and FHIR exports are final.")
else:
    st.warning("This case is not signed off. The PDF and HTML reports are marked \"PRELIMINARY - not signed off\" "
               "on every page and the FHIR report has status \"preliminary\": counts may still change while cells "
               "are reviewed.")
code = safe_display_name(case.case_code)  # a file name: no path, no control or bidi characters
try:
    pdf = render_pdf_report(case, meta, audit, users)
except Exception as exc:  # a report that cannot be drawn is said plainly; the other exports still work
    pdf = None
    st.error(f"The PDF report could not be made ({type(exc).__name__}: {md(exc)}); the HTML report has the same content.")
c1, c2, c3, c4 = st.columns(4)
if pdf is not None:
    c1.download_button("Report (PDF)", pdf, file_name=f"{code}_report.pdf", mime="application/pdf", key="dl_pdf")
c2.download_button("Report for the LIS (FHIR R4 JSON)", fhir_json(case, meta, audit, users),
                   file_name=f"{code}_fhir.json", mime="application/fhir+json", key="dl_fhir")
c3.download_button("Cell table (CSV)", rows_to_csv(rows), file_name=f"{code}_cells.csv", mime="text/csv",
                   key="dl_csv")
c4.download_button("Report (HTML, printable)", html, file_name=f"{code}_report.html", mime="text/html",
                   key="dl_html")
st.caption("PDF: the report to file. FHIR: a DiagnosticReport with one Observation per cell type's percentage and the "
           "M:E ratio, coded in a local code system (" + LOCAL_SYSTEM + ") for your LIS to map; no LOINC codes are "
           "assumed. CSV: every cell with its file, box in the source field (empty for uploaded crops), the model's "
           "label, the final label, the reviewer and the confidence; it is the working state of the case"
           + ("." if signed else " and, like the reports, preliminary until sign-off."))
with st.expander("Report preview", expanded=True):
    st.iframe(html, height=700)  # every user-typed string in the report is HTML-escaped
