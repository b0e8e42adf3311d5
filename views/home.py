import streamlit as st

import appkit
from bmcore.tasks import cell_name

st.title("Bone marrow cell classifier")
appkit.ruo_banner()
st.markdown(
    """
This tool **pre-classifies single-cell crops** from May-Grünwald-Giemsa / Pappenheim-stained bone marrow
smears (one crop = one cell, like the 250×250 crops of the Matek et al. 2021 dataset), shows **what the
model looked at** (Grad-CAM heatmaps), **flags suspected hairy cells** when the model knows them, counts a
**differential**, and lets a reviewer **confirm or correct every cell and sign the case off**.

It is **not** a diagnostic device: every label is a suggestion for a qualified morphologist to check. It takes
single-cell crops and smear-field photographs (it finds the nucleated cells of a field and classifies each), not
whole-slide images, and it only knows the classes listed below.
"""
)
if st.session_state.get("predictor_ok"):
    pred = appkit.predictor()
    b = pred.bundle
    m = b.meta.get("metrics", {})
    st.subheader(f"Loaded model: {b.name}")
    c1, c2, c3 = st.columns(3)
    c1.metric("Backbone", b.meta.get("timm_name", b.backbone))
    if m:
        c2.metric("Macro-F1", f"{m['macro_f1']:.3f}", help=m.get("split"))
        c3.metric("Accuracy", f"{m['accuracy']:.3f}", help=m.get("split"))
        st.caption(f"Measured on the {m.get('split', 'held-out test split')}; image-level split (file names carry "
                   "no patient id), so these figures may be optimistic for new patients and other labs.")
    st.markdown("**Classes this model recognises:** " + ", ".join(f"{c} ({cell_name(c)})" for c in b.classes))
    missing = b.missing_classes()
    if missing:
        st.markdown(f"**Classes of the `{b.meta['task']}` task it does not recognise** (no training images): "
                    + ", ".join(f"{c} ({cell_name(c)})" for c in missing)
                    + ". Cells of these types will be given the nearest known class; review them.")
st.subheader("Pages")
for path, text in [("views/classify.py", "Classify: upload crops, see classes, confidence and heatmaps"),
                   ("views/hairy_cells.py", "Hairy cells: the hairy-cell screen and its alert"),
                   ("views/differential.py", "Differential: counts, percentages, M:E ratio"),
                   ("views/review.py", "Review: confirm or correct cells, sign the case off, audit trail"),
                   ("views/export.py", "Export: PDF and printable report, FHIR for the LIS, cell table (CSV)"),
                   ("views/model_comparison.py", "Model comparison: how backbones compare on the same data"),
                   ("views/model_card.py", "Model card: what the loaded model is and is not")]:
    st.page_link(path, label=text)
