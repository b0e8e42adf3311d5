import pandas as pd
import streamlit as st

import appkit
from bmcore.cases import CaseError, cell_inputs
from bmcore.explain import CAM_METHODS, overlay
from bmcore.inputs import MAX_FILES, enforce_limit, from_upload
from bmcore.tasks import cell_name

GALLERY_PAGE = 36
ORIGINALS_BUDGET = 256 * 2**20  # bytes of original uploads one browser session keeps for heatmaps
UPLOAD_TYPES = ["jpg", "jpeg", "png", "tif", "tiff", "bmp", "gif", "webp", "zip"]

st.title("Classify")
appkit.ruo_banner()
pred = appkit.predictor()
store = appkit.get_store()

with st.container(border=True):
    code = st.text_input("Case id", key="new_case_code", placeholder="e.g. BM-2026-0142",
                         help="Your lab's id for this smear. No patient names.")
    files = st.file_uploader("Cell crops (JPEG, PNG, TIFF, BMP, GIF, WebP) or ZIP archives of them", type=UPLOAD_TYPES,
                             accept_multiple_files=True, key="uploads")
    go = st.button("Classify", type="primary", disabled=not files)

if go:
    if not code.strip():
        st.error("Enter a case id first.")
    elif store.case_id(code) is not None:
        st.error(f"Case {code.strip()!r} already exists. Pick it under **Active case** in the sidebar, or use "
                 "another id.")
    else:
        items = []
        for f in files:
            items += from_upload(f.name, f.getvalue(), max_files=MAX_FILES)
        n_ok = sum(it.ok for it in items)
        if n_ok > MAX_FILES:
            st.warning(f"{n_ok} images: only the first {MAX_FILES} are classified; the rest are listed as refused.")
        items = enforce_limit(items, MAX_FILES)
        n_ok = min(n_ok, MAX_FILES)
        bar = st.progress(0.0, text=f"Classifying {n_ok} cells…")
        preds = pred.predict_items(items, progress=lambda d, t: bar.progress(d / t, text=f"Classified {d} of {t}"),
                                   threshold=st.session_state["threshold"],
                                   hairy_threshold=st.session_state["hairy_threshold"])
        bar.empty()
        try:
            cid = store.create_case(code, cell_inputs(items, preds), who=st.session_state.get("reviewer", ""),
                                    model_name=pred.bundle.name,
                                    model_sha256=pred.bundle.sha256, model_classes=pred.classes)
        except CaseError as exc:
            st.error(str(exc))
        else:
            st.session_state["case_id"] = cid
            # originals stay in this session for full-resolution heatmaps, within a memory budget per session;
            # past it (or after a reload) heatmaps use the stored thumbnail
            originals = st.session_state.setdefault("originals", {})
            used = sum(len(v) for v in originals.values())
            for i, it in enumerate(items):
                if it.ok and preds[i].ok and isinstance(it.source, bytes) and used + len(it.source) <= ORIGINALS_BUDGET:
                    originals[(cid, i)] = it.source
                    used += len(it.source)
            st.rerun()

case = appkit.active_case()
if case is None:
    st.stop()
df = appkit.cells_frame(case)
ok = df[df.status == "ok"]
rejected = df[df.status == "rejected"]
st.subheader(f"Case {case.case_code}")
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Cells classified", len(ok))
c2.metric("Uncertain", int(ok.uncertain.sum()), help="Confidence below the threshold set when classified")
c3.metric("Hairy-cell flags", int(ok["hairy flag"].sum()) if "HAC" in pred.classes else "off")
c4.metric("Rejected: not a cell crop", len(rejected),
          help="Images the model's quality / out-of-distribution gate refused to classify; not in the differential")
c5.metric("Unreadable files", int((df.status == "unreadable").sum()))
bad = df[df.status == "unreadable"]
if len(bad):
    with st.expander(f"{len(bad)} file(s) could not be used", expanded=True):
        st.dataframe(bad[["file", "error"]], hide_index=True, width="stretch")

tab_table, tab_gallery, tab_uncertain, tab_rejected, tab_cell = st.tabs(
    ["Results table", "Gallery", "Uncertain bin", f"Rejected bin ({len(rejected)})", "Cell view"])

with tab_table:
    f1, f2 = st.columns([3, 1])
    classes = f1.multiselect("Show classes", sorted(ok.final.unique()), key="filter_classes",
                             format_func=lambda c: f"{c} {cell_name(c)}")
    only = f2.radio("Show", ["all", "uncertain", "hairy flag"], horizontal=True, key="filter_only")
    view = ok
    if classes:
        view = view[view.final.isin(classes)]
    if only != "all":
        view = view[view[only]]
    st.dataframe(view.drop(columns=["status", "error", "cell_id", "version"]), hide_index=True, width="stretch",
                 column_config={"confidence": st.column_config.ProgressColumn("confidence", min_value=0.0,
                                                                              max_value=1.0, format="%.2f")})
    st.caption(f"{len(view)} of {len(ok)} cells. Confidence is the calibrated probability of the predicted class.")


def grid(rows: pd.DataFrame, caption_fn) -> None:
    cells = {c.position + 1: c for c in case.cells}
    cols = st.columns(6)
    for i, (_, r) in enumerate(rows.iterrows()):
        c = cells[r["#"]]
        if c.thumbnail:
            cols[i % 6].image(c.thumbnail, caption=caption_fn(r), width="stretch")


with tab_gallery:
    counts = ok.final.value_counts()
    if len(counts):
        g1, g2 = st.columns([3, 1])
        cls = g1.selectbox("Class", list(counts.index), key="gallery_class",
                           format_func=lambda c: f"{c} {cell_name(c)} ({counts[c]})")
        sub = ok[ok.final == cls].sort_values("confidence")
        pages = max(1, -(-len(sub) // GALLERY_PAGE))
        page = g2.number_input("Page", 1, pages, 1, key="gallery_page") if pages > 1 else 1
        grid(sub.iloc[(page - 1) * GALLERY_PAGE: page * GALLERY_PAGE], lambda r: f"#{r['#']} · {r.confidence:.2f}")

with tab_uncertain:
    unc = ok[ok.uncertain].sort_values("confidence")
    if unc.empty:
        st.success("No uncertain cells in this case.")
    else:
        st.write(f"{len(unc)} cell(s) below the confidence threshold. They are left out of the differential until "
                 "a reviewer resolves them on the **Review** page.")
        grid(unc.head(GALLERY_PAGE * 2), lambda r: f"#{r['#']} {r.predicted}? {r.confidence:.2f}")

with tab_rejected:
    if rejected.empty:
        st.success("Every readable image passed the model's quality and out-of-distribution checks.")
    else:
        st.write(f"{len(rejected)} image(s) are not a recognisable bone marrow single-cell crop for this model "
                 "(e.g. a whole field, another magnification, a blurred or blank crop, a photo). They get no class "
                 "and are left out of the differential; a reviewer can still label them on the **Review** page.")
        st.dataframe(rejected[["#", "file", "error"]].rename(columns={"error": "reason"}), hide_index=True,
                     width="stretch")
        grid(rejected.head(GALLERY_PAGE), lambda r: f"#{r['#']} {r.error}")

@st.fragment
def cell_view() -> None:
    """One cell beside its heatmap; a fragment, so picking another cell reruns only this part of the page."""
    shown = pd.concat([ok, rejected])
    if not len(shown):
        return
    labels = {int(r["#"]): f"#{r['#']} {r.file} — " + (f"{r.final} ({r.confidence:.2f})" if r.status == "ok" else
                                                       f"rejected: {r.error}") for _, r in shown.iterrows()}
    pos = st.selectbox("Cell", sorted(labels), format_func=labels.get, key="cell_pick")
    cell = next(c for c in case.cells if c.position + 1 == pos)
    h1, h2, h3 = st.columns(3)
    method = h1.selectbox("Method", list(CAM_METHODS)[:4], key="cam_method",
                          format_func={"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "EigenCAM",
                                       "layercam": "LayerCAM"}.get)
    order = sorted(pred.classes, key=lambda c: -(cell.probabilities or {}).get(c, 0))
    # keyed per cell: the class to explain starts at this cell's own top class, never a previous cell's choice
    target = h2.selectbox("Explain class", order, key=f"cam_class_{cell.id}",
                          format_func=lambda c: f"{c} {cell_name(c)} (p={cell.probabilities.get(c, 0):.2f})")
    alpha = h3.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="cam_opacity")
    if cell.rejected:
        st.warning(f"The model's gate rejected this image ({cell.reject_reason}); the heatmap shows what the model "
                   "looked at, but its class is not used.")
    data = appkit.image_bytes(case.id, cell)
    if data is None:
        st.info("No image stored for this cell.")
        return
    cam, rgb, _ = appkit.heatmap(st.session_state["bundle"], data, target, method)
    v1, v2 = st.columns(2)
    v1.image(rgb, caption=f"{cell.name} as the model sees it", width="stretch")
    v2.image(overlay(rgb, cam, alpha), caption=f"{method} for {target} ({cell_name(target)})", width="stretch")
    if data is cell.thumbnail:
        st.caption("Heatmap computed from the stored thumbnail (the original upload is not in this session).")
    st.caption("Red areas raised the score of the explained class most. A heatmap shows where the model "
               "looked, not that it is right.")


with tab_cell:
    cell_view()
