import pandas as pd
import streamlit as st

import appkit
from bmcore import caserules
from bmcore.cases import STATUS_SIGNED, CaseError
from bmcore.casetext import inference_text, reviewer_text
from bmcore.explain import CAM_METHODS, METHOD_NAMES, cam_caption, cam_sentence, overlay
from bmcore.fielddraw import class_colour, draw_field, legend_chip
from bmcore.fields import (RBC_DIAMETER_UM, expand_fields, field_record,
                           scale_words)
from bmcore.inputs import MAX_FILES, enforce_limit, from_upload
from bmcore.demo import demo_code, demo_uploads
from bmcore.tasks import cell_name
from bmcore.text import md

GALLERY_PAGE = 36
ORIGINALS_BUDGET = 256 * 2**20  # bytes of original uploads one browser session keeps for heatmaps
UPLOAD_TYPES = ["jpg", "jpeg", "png", "tif", "tiff", "bmp", "gif", "webp", "zip"]

st.title("Classify")
appkit.ruo_banner()
pred = appkit.predictor()  # the model for new cases (sidebar); an existing case is read with its own model
store = appkit.get_store()
runner = appkit.get_runner()


def case_scale(case) -> float | None:
    """The µm/px typed for an existing case's fields, if one was: its missing cells are cut again, and more fields
    of the same smear are cut, at that scale."""
    given = [c.origin["um_per_px"] for c in case.cells if c.origin and c.origin.get("scale_source") == "user"]
    return given[0] if given else None


def uploads(files) -> list[tuple[str, bytes]]:
    return [(f.name, f.getvalue()) for f in files or []]


def collect(files: list[tuple[str, bytes]], fields: list | None = None, crop_side: int | None = None,
            scale: float | None = None) -> list:
    """The uploads ((name, bytes) each) as items, each smear-field image replaced by the cells found in it
    (``bmcore.fields``, at ``scale`` µm/px, None: estimated from the red cells; the fields found are appended to
    ``fields``), cut at ``crop_side`` (the model's)."""
    items = []
    for name, data in files:
        items += from_upload(name, data, max_files=MAX_FILES)
    try:
        items, found = expand_fields(items, crop_side or pred.bundle.crop_side, scale or None)
    except ValueError as exc:  # a scale out of range
        st.error(md(exc))
        st.stop()
    if fields is not None:
        fields += found
    n_ok = sum(it.ok for it in items)
    if n_ok > MAX_FILES:
        st.warning(f"{n_ok} images: only the first {MAX_FILES} are classified; the rest are listed as refused.")
    return enforce_limit(items, MAX_FILES)


def keep_originals(case_id: int, work) -> None:
    """Originals stay in this session for full-resolution heatmaps, within a memory budget per session; past it
    (or after a reload) heatmaps use the stored thumbnail."""
    originals = st.session_state.setdefault("originals", {})
    used = sum(len(v) for v in originals.values())
    for pos, it in work:
        if isinstance(it.source, bytes) and used + len(it.source) <= ORIGINALS_BUDGET:
            originals[(case_id, pos)] = it.source
            used += len(it.source)


rules = appkit.new_case_rules(pred)
who = appkit.actor()
can_classify = who.can("classify")
if not can_classify:
    st.info(f"You are signed in as a {who.role}: you can open cases and see their results (sidebar: **Active "
            "case**), but classifying new crops needs a technologist's account.")
go = demo = False
if can_classify:
    with st.container(border=True):
        code = st.text_input("Case id", key="new_case_code", placeholder="e.g. BM-2026-0142",
                             help="Your lab's id for this smear. No patient names.")
        # emptied once its files are in a case (appkit.empty_uploader)
        files = st.file_uploader("Cell crops (JPEG, PNG, TIFF, BMP, GIF, WebP) or ZIP archives of them; smear-field "
                                 "photographs too (the cells are found in them)",
                                 type=UPLOAD_TYPES, accept_multiple_files=True, key=appkit.upload_key(st.session_state))
        st.number_input("Scale of field photographs (µm per pixel; 0 = estimate from the red cells)", min_value=0.0,
                        max_value=5.0, value=0.0, step=0.005, format="%.4f", key="field_um_per_px",
                        help="Only for field images: every whole nucleated cell is cut out at the training crops' "
                             "scale and classified like an uploaded crop; several fields of one smear go into one "
                             "case.")
        b1, b2 = st.columns([1, 3])
        go = b1.button("Classify", type="primary", disabled=not files)
        demo = b2.button("Try the demo case", disabled=not demo_uploads(),
                         help="40 bone marrow crops and 2 smear fields from public datasets, opened as a case marked "
                              "as a demo: never counted in the lab's figures")
        st.caption(f"New cases are classified by **{appkit.model_label(pred.bundle.name, pred.bundle.sha256)}** "
                   f"(sidebar). Sent to review: {rules.describe()}.")

def start(code: str, files: list[tuple[str, bytes]], scale: float | None, *, demo: bool = False) -> None:
    fields = []
    items = collect(files, fields, scale=scale)
    work = [(i, it) for i, it in enumerate(items) if it.ok]
    if not items:
        st.error("Nothing to classify: the upload holds no image file.")
        st.stop()
    try:
        cid = runner.start_case(code, items, pred, rules, who, field_images=[field_record(f) for f in fields], demo=demo)
    except CaseError as exc:  # QueueFull included: nothing was left behind
        st.error(md(exc))
    else:
        appkit.set_active_case(cid)
        keep_originals(cid, work)
        if not demo:
            appkit.empty_uploader(st.session_state)
        st.rerun()


if can_classify and demo:
    start(demo_code(c["case"] for c in store.list_cases(appkit.actor())), demo_uploads(), None, demo=True)
if go:
    if not code.strip():
        st.error("Enter a case id first.")
    elif store.case_id(code) is not None:
        st.error(f"Case {code.strip()!r} already exists. Pick it under **Active case** in the sidebar, or use "
                 "another id.")
    else:
        start(code, uploads(files), st.session_state.get("field_um_per_px"))

case = appkit.active_case()
if case is None:
    st.stop()
st.subheader(f"Case {md(case.case_code)}")
st.caption(f"Classified by **{appkit.case_model(case)}**" + (f" ({inference_text(case)})" if inference_text(case) else "")
           + f" · {caserules.case_review_rules(case).describe()}")
job = appkit.job_banner(case)
summ = caserules.summary(case)
if summ.pending and not (job and job["status"] in ("queued", "running")) and can_classify:
    with st.container(border=True):
        st.markdown("**Finish this partial case**")
        cpred = appkit.case_predictor(case)
        again = st.file_uploader("The same files again (only the missing cells are classified)", type=UPLOAD_TYPES,
                                 accept_multiple_files=True, key=f"resume_files_{case.id}")
        r1, r2 = st.columns(2)
        if r1.button("Resume classification", key="resume_btn", disabled=not again or cpred is None):
            try:
                pairs, extra = runner.resume(case, collect(uploads(again), crop_side=cpred.bundle.crop_side,
                                                           scale=case_scale(case)), cpred, caserules.case_review_rules(case))
            except CaseError as exc:  # none of them missing, queue full, or the case was deleted meanwhile
                st.error(md(exc))
            else:
                keep_originals(case.id, pairs)
                if extra:
                    st.session_state["classify_msg"] = (f"{len(extra)} file(s) are not missing cells of this case "
                                                        "and were not used: " + ", ".join(map(md, extra[:10])))
                st.rerun()
        if who.can("delete"):
            sure = r2.checkbox(f"Yes, delete case {md(case.case_code)} with its {summ.cells} cells",
                               key="delete_partial_ok")
            if r2.button("Delete this partial case", key="delete_partial", disabled=not sure):
                try:
                    store.delete_case(case.id, who)
                except CaseError as exc:
                    st.error(md(exc))
                else:
                    appkit.set_active_case(None)
                    st.rerun()
        else:
            r2.caption("An admin can delete a partial case if it cannot be finished.")
elif can_classify and case.status != STATUS_SIGNED and not (job and job["status"] in ("queued", "running")):
    with st.expander("Add more smear fields or crops to this case"):
        st.caption(f"Fields of the same smear, so that a 500-cell differential can be counted from several uploads. "
                   f"They are classified by this case's own model, **{appkit.case_model(case)}**, whatever the sidebar "
                   "shows.")
        cpred = appkit.case_predictor(case)
        more = st.file_uploader("Field photographs or crops to add", type=UPLOAD_TYPES, accept_multiple_files=True,
                                key=f"add_files_{case.id}")
        if case_scale(case) is None:
            st.number_input("Scale of these field photographs (µm per pixel; 0 = estimate from the red cells)",
                            min_value=0.0, max_value=5.0, value=0.0, step=0.005, format="%.4f",
                            key=f"add_um_per_px_{case.id}")
        if st.button("Add to this case", key=f"add_btn_{case.id}", disabled=not more or cpred is None):
            new_fields = []
            items = collect(uploads(more), new_fields, crop_side=cpred.bundle.crop_side,
                            scale=case_scale(case) or st.session_state.get(f"add_um_per_px_{case.id}"))
            # the count this screen showed before the click (a colleague may have added cells since), not a new read
            shown = st.session_state.get(f"add_shown_{case.id}", len(case.cells))
            try:
                added = runner.add_to_case(case.id, items, cpred, caserules.case_review_rules(case), who,
                                           expected_cells=shown, field_images=[field_record(f) for f in new_fields])
            except CaseError as exc:  # a stale page, a signed-off case, a field already in it, a full queue
                st.error(md(exc))
            else:
                if added.queue_error:  # queue filled meanwhile: the cells stay pending, resumable above
                    st.session_state["classify_msg"] = f"{md(added.queue_error)} The added cells wait as a partial case."
                else:
                    keep_originals(case.id, added.work)
                st.session_state.pop(f"add_shown_{case.id}", None)
                st.rerun()
        st.session_state[f"add_shown_{case.id}"] = len(case.cells)
if msg := st.session_state.pop("classify_msg", None):
    st.warning(msg)

df = appkit.cells_frame(case)
ok = df[df.status == caserules.OK]
rejected = df[df.status == caserules.REJECTED]
c1, c2, c3 = st.columns(3)  # two rows of three: six tiles in a row cut their labels short ("Not judged by the …")
n_read = summ.classified + summ.rejected  # readable images the model looked at
c1.metric("Cells classified", f"{summ.classified} of {n_read}" if n_read else 0,
          help="Readable images the model gave a class, of all readable images it looked at")
c2.metric("Uncertain", f"{summ.uncertain} of {summ.classified}",
          help="Confidence below the case's review threshold, of the classified cells")
n_blast = sum(caserules.possible_blast(c) for c in case.cells if caserules.status(c) == caserules.OK)
c3.metric("Possible blasts", f"{n_blast} of {summ.classified}",
          help="Calibrated P(blast) at or above the case's critical threshold, whatever the top class, of the "
               "classified cells: reviewed one by one")
c4, c5, c6 = st.columns(3)
c4.metric("Hairy-cell flags", f"{summ.hairy_flags} of {summ.classified}" if summ.hairy_flags is not None
          else "unavailable", help=caserules.hairy_screening(case)[1])
c5.metric("Not judged by the gate", f"{summ.rejected} of {n_read}" if n_read else 0,
          help="Images the model would not judge (they look unlike its training crops); a reviewer gives each a "
               "class or dismisses it before sign-off")
c6.metric("Unreadable files", summ.unreadable,
          help="Files that could not be used, listed below with the reason: not a readable image, unsafe, or too "
               "large to be a single-cell crop (a camera field or a mosaic of cells)")


# a drawn field only changes when a label does: drawn once per (field, boxes, colours), not on every rerun
drawn_field = st.cache_data(max_entries=64, show_spinner=False)(draw_field)


def field_section() -> None:
    """The smear fields whose cells joined the case: each drawn with its cells' numbered boxes, coloured by class."""
    from_fields = [c for c in case.cells if c.origin]
    if not from_fields:
        return
    shots = store.field_images(case.id, appkit.actor())
    whole = [c for c in from_fields if c.ok]
    refused = [c for c in whole if c.rejected]
    scales = sorted({f"{c.origin.get('um_per_px', 0):.4f} µm/px ({scale_words(c.origin.get('scale_source'))})"
                     for c in from_fields})
    st.info(f"**{len(from_fields)} nucleated cells found in {len(shots)} field image(s)**: {len(whole)} whole cells "
            f"classified like uploaded crops, {len(from_fields) - len(whole)} cut by the field's border (listed "
            f"below, not classified). Scale: {'; '.join(scales)}. "
            + (f"The model's gate refused **{len(refused)} of {len(whole)}** whole cells: it was trained on bone marrow "
               "crops and is expected to refuse many peripheral-blood cells (the 'Not judged by the gate' tab)." if whole else ""))
    by_field: dict[str, list] = {}
    for c in from_fields:
        by_field.setdefault(c.origin["field"], []).append(c)
    classes = list(case.model_classes or [])
    with st.expander(f"Smear fields ({len(shots)})", expanded=True):
        used = sorted({c.label for c in whole if c.label})

        st.markdown(" ".join([legend_chip(k, f"{k} {cell_name(k)}", classes) for k in used]
                             + [legend_chip(None, "no class (refused, cut, not yet classified)", classes)]),
                    unsafe_allow_html=True)
        cols = st.columns(2)
        for i, shot in enumerate(shots):
            cells = by_field.get(shot["name"], [])
            boxes = [(c.position + 1, tuple(c.origin["box"]), class_colour(c.label, classes)) for c in cells]
            n = f"{len(cells)} cell" + ("" if len(cells) == 1 else "s")
            scale = shot.get("scale") or {}
            um, source = scale.get("um_per_px"), str(scale.get("source", ""))
            gauge = (f" The black-and-white circle is a {RBC_DIAMETER_UM:g} µm red cell at the scale used, "
                     f"{um:.4f} µm/px ({scale_words(source)}): if it is not the size of this field's red cells, that scale is wrong, "
                     "and so are the cell boxes and crops; classify the field again in a new case with "
                     + ("the right scale" if source == "user" else "its scale") + " typed in (Scale of field "
                     "photographs)." if um else "")
            cols[i % 2].image(drawn_field(shot["image"], shot["width"], shot["height"], tuple(boxes), um),
                              width="stretch", caption=f"{md(shot['name'])} ({shot['width']}x{shot['height']} px): {n}, "
                                                       f"numbered as in the results table.{gauge}")


field_section()
bad = df[df.status == caserules.UNREADABLE]
if len(bad):
    with st.expander(f"{len(bad)} file(s) could not be used", expanded=True):
        st.dataframe(bad[["file", "error"]], hide_index=True, width="stretch")

# only the open tab's content is drawn (the table's always, so its filters keep): the others held up to 140 thumbnails
# and a Grad-CAM that every draw of the page computed and every browser loaded, seen or not. Labels stay the same
# while counts change, so the open tab stays open; the counts are in the metrics above and in each bin.
tab_table, tab_gallery, tab_review, tab_rejected, tab_cell = st.tabs(
    list(appkit.CASE_TABS), key=appkit.CASE_TAB_KEY, on_change="rerun")

with tab_table:
    f1, f2 = st.columns([3, 1])
    classes = f1.multiselect("Show classes", sorted(ok.final.unique()), key="filter_classes",
                             format_func=lambda c: f"{c} {cell_name(c)}")
    only = f2.radio("Show", ["all", "needs review", "hairy flag"], horizontal=True, key="filter_only")
    view = ok
    if classes:
        view = view[view.final.isin(classes)]
    if only == "needs review":
        view = view[view.review != ""]
    elif only == "hairy flag":
        view = view[view["hairy flag"].astype(bool)]
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
    if tab_gallery.open is not False and len(counts):
        g1, g2 = st.columns([3, 1])
        # class and page are kept while another tab is open (a closed tab's widgets are not drawn, and so forgotten)
        cls = g1.selectbox("Class", list(counts.index), format_func=lambda c: f"{c} {cell_name(c)} ({counts[c]})",
                           **appkit.kept(f"gallery_class_{case.id}", counts.index[0], list(counts.index)))
        sub = ok[ok.final == cls].sort_values("confidence")
        pages = max(1, -(-len(sub) // GALLERY_PAGE))
        page = g2.number_input("Page", 1, pages, **appkit.kept(f"gallery_page_{case.id}_{cls}", 1,
                                                               range(1, pages + 1))) if pages > 1 else 1
        grid(sub.iloc[(page - 1) * GALLERY_PAGE: page * GALLERY_PAGE], lambda r: f"#{r['#']} · {r.confidence:.2f}")

with tab_review:
    unc = ok[ok.review != ""].sort_values("confidence")
    if tab_review.open is False:
        pass  # closed: nothing drawn
    elif unc.empty:
        st.success("No cell of this case needs a person's review before it counts.")
    else:
        st.write(f"{len(unc)} cell(s) are uncertain or may be a critical cell type. They are left out of the "
                 "differential until a reviewer resolves them on the **Review** page.")
        grid(unc.head(GALLERY_PAGE * 2), lambda r: f"#{r['#']} {r.predicted}? {r.confidence:.2f} · {r.review}")

with tab_rejected:
    if tab_rejected.open is False:
        pass  # closed: nothing drawn
    elif rejected.empty:
        st.success("Every readable image passed the model's quality and out-of-distribution checks.")
    else:
        st.write(f"The model would not judge {len(rejected)} image(s): they look {caserules.REJECTED_WORDS}. The gate refuses "
                 "some genuine cells too (the Model card says how many of its held-out test crops). Each must be given "
                 "a class or dismissed as not a cell on the **Review** page before the case can be signed off; until "
                 "then the differential's percentages are ranges.")
        st.dataframe(rejected[["#", "file", "error"]].rename(columns={"error": "reason"}), hide_index=True,
                     width="stretch")
        grid(rejected.head(GALLERY_PAGE), lambda r: f"#{r['#']} {r.error}")


@st.fragment
def cell_view() -> None:
    """One cell beside its heatmap, by the case's own model; a fragment, so picking another cell reruns only this."""
    shown = pd.concat([ok, rejected])
    if not len(shown):
        return
    bundle_path = appkit.case_bundle_path(case)
    if bundle_path is None:
        appkit.case_predictor(case)  # says plainly that the case's model is not installed; no other model is used
        return
    cpred = appkit.get_predictor(str(bundle_path))
    # the picker's value is a cell id kept per case; its text holds only what is fixed once a cell is classified
    # (the browser hands the text back, and a text a colleague's review had changed would name no cell)
    labels = {int(r.cell_id): f"#{r['#']} {r.file} — " + (f"model: {r.predicted} ({r.confidence:.2f})"
                                                           if r.status == "ok" else f"rejected: {r.error}")
              for _, r in shown.iterrows()}
    ids = [int(i) for i in shown.sort_values("#").cell_id]
    chosen = st.selectbox("Cell", ids, format_func=labels.get, **appkit.kept(f"cell_pick_{case.id}", ids[0], ids))
    # the cell as stored now: this fragment reruns alone, and a colleague may have reviewed it since the page was drawn
    cell = next(c for c in store.get_case(case.id, appkit.actor()).cells if c.id == chosen)
    if cell.final_label is not None:
        st.caption(f"Reviewed: {md(cell.final_label)} ({md(cell_name(cell.final_label))}) by {md(reviewer_text(cell))}")
    h1, h2, h3 = st.columns(3)
    # method and opacity are kept while another tab is open, like the cell
    methods = list(CAM_METHODS)[:4]
    method = h1.selectbox("Method", methods, **appkit.kept("cam_method", methods[0], methods),
                          format_func=METHOD_NAMES.get)
    order = sorted(cpred.classes, key=lambda c: -(cell.probabilities or {}).get(c, 0))
    # keyed per cell: the class to explain starts at this cell's own top class, never a previous cell's choice
    target = h2.selectbox("Explain class", order, **appkit.kept(f"cam_class_{case.id}_{cell.id}", order[0], order),
                          format_func=lambda c: f"{c} {cell_name(c)} (p={cell.probabilities.get(c, 0):.2f})")
    alpha = h3.slider("Heatmap opacity", 0.0, 1.0, step=0.05, **appkit.kept("cam_opacity", 0.5))
    if cell.rejected:
        st.warning(f"The model's gate would not judge this image ({cell.reject_reason}); the heatmap shows what the model "
                   "looked at, but its class is not used.")
    data = appkit.image_bytes(case.id, cell)
    if data is None:
        st.info("No image stored for this cell.")
        return
    cam, rgb, _ = appkit.heatmap(str(bundle_path), data, target, method)
    v1, v2 = st.columns(2)
    v1.image(rgb, caption=f"{md(cell.name)} as the model sees it", width="stretch")
    v2.image(overlay(rgb, cam, alpha), caption=cam_caption(method, target, cell_name(target), appkit.case_model(case)),
             width="stretch")
    if data is cell.thumbnail:
        st.caption("Heatmap computed from the stored thumbnail (the original upload is not in this session).")
    st.caption(cam_sentence(method))


with tab_cell:
    if tab_cell.open is not False:
        cell_view()
appkit.code_key(list(case.model_classes or []) + [c.label for c in case.cells if c.label])
