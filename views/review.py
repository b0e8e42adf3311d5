"""Review and sign-off: every action carries the cells (and the versions of them) that the reviewer saw.

Two ways to review, over the same store calls:

* **Gallery by class** (the default): the cells laid out per class, in the order a differential is read (blasts and
  flagged classes first), a page of thumbnails at a time. Tick the misplaced ones and move them to their class in
  one action, then confirm the page: "confirm" takes exactly the cells drawn on that page at the versions drawn
  (``CaseStore.review_cells``), so a cell changed by a colleague or filled in by a running job after the page was
  drawn is left alone and named. Undo takes the last action back.
* **One cell**: the picker (a cell id kept in session state per case, never an option text), the crop, the top-3
  probabilities, a label box; buttons act through callbacks that receive the cell id and the version the reviewer
  opened; the store refuses a stale action ("changed by ... reload and try again") and saves nothing.
"""

from dataclasses import dataclass

import pandas as pd
import streamlit as st

import appkit
from bmcore.db import utcnow
from bmcore import caserules
from bmcore.cases import SPECIMEN_MAX, STATUS_SIGNED, CaseError, ConflictError, case_details
from bmcore.casetext import inference_text, reviewer_text, signature_text, signer_text
from bmcore.differential import sign_off_checks
from bmcore.explain import cam_caption
from bmcore.tasks import DISMISSED_CODE, TASKS, cell_name
from bmcore.text import clean, md

GALLERY_PAGE = 40     # thumbnails per gallery page
GALLERY_COLUMNS = 6  # eight cut a tile's label short ("⚑ #20 …"); six show "⚑ #20 0.55" whole

st.title("Review and sign-off")
appkit.ruo_banner()
store = appkit.get_store()

cases = store.list_cases(appkit.actor())
with st.expander(f"All cases ({len(cases)})", expanded=False):
    if cases:
        st.dataframe(pd.DataFrame(cases).drop(columns=["id", "short"]), hide_index=True, width="stretch")
who = appkit.actor()  # every change below is recorded under this signed-in user, and the store checks the role
case = appkit.active_case()
if case is None:
    st.stop()

PICK = f"review_cell_{case.id}"        # the chosen cell id (the truth)
WPICK = f"_w_review_cell_{case.id}"    # the picker widget mirroring it
seen = appkit.seen_versions(case.id)


@dataclass
class Screen:
    """What this page's callbacks act on, handed to each explicitly (a callback runs before the next script run,
    when the module's names may already belong to another case): the store, the case as this screen drew it, the
    cell versions it showed (``appkit.seen_versions``) and the key of its One cell picker."""
    store: object
    case_id: int
    case_code: str
    seen: dict
    pick: str


scr = Screen(store, case.id, case.case_code, seen, PICK)


def _say(scr: Screen, kind: str, text: str, where: str = "top") -> None:
    """A message for the next draw: at the top of the page, or ("one") beside the One cell view's buttons, where the
    reviewer who pressed them is looking."""
    st.session_state["review_msg"] = (kind, text)
    st.session_state["review_msg_case"] = scr.case_id
    st.session_state["review_msg_where"] = where


def _run(scr: Screen, fn, ok_msg: str, where: str = "top") -> bool:
    try:
        fn()
    except ConflictError as exc:
        _say(scr, "warning", f"Not saved: {md(exc)}", where)
    except CaseError as exc:
        _say(scr, "error", f"Not saved: {md(exc)}", where)
    else:
        _say(scr, "success", ok_msg, where)
        return True
    return False


def label_key(case_id: int, cell_id: int, seen_version: int) -> str:
    """The One cell label box's key: per cell and per version scr.seen, so a reload shows the stored label, never the
    label a stale screen held."""
    return f"label_{case_id}_{cell_id}_{seen_version}"


def review(scr: Screen, cell_id: int, pos: int, seen_version: int, label: str | None, predicted: str, next_id: int | None) -> None:
    """Confirm (label None), relabel (label "chosen": the label box) or dismiss (label DISMISSED_CODE) cell
    ``cell_id`` as scr.seen at ``seen_version``; then show ``next_id``."""
    new = predicted if label is None else label if label == DISMISSED_CODE else \
        st.session_state[label_key(scr.case_id, cell_id, seen_version)]
    verb = (f"confirmed as {new}" if label is None else "dismissed as not a cell" if new == DISMISSED_CODE
            else f"set to {new} ({cell_name(new)})")
    out = {}

    def do():
        out["v"] = scr.store.review_cell(cell_id, appkit.actor(), new, expected_version=seen_version,
                                     case_id=scr.case_id)

    if _run(scr, do, f"#{pos} {verb}.", "one"):
        scr.seen[cell_id] = out["v"]
        if next_id is not None:
            st.session_state[scr.pick] = next_id
            st.session_state["review_msg"] = ("success", st.session_state["review_msg"][1]
                                              + " Showing the next cell to review.")


def reload_cell(scr: Screen, cell_id: int, version: int) -> None:
    scr.seen[cell_id] = version  # the label box, keyed by the version scr.seen, shows the stored label again
    _say(scr, "info", "Reloaded: you now see the cell as it is stored.", "one")


def gallery_action(scr: Screen, shown: dict[int, int], group: str, page: int, move: str | None) -> None:
    """The gallery form's buttons: move the ticked cells of this page to class ``move`` ("other": the class chosen in
    the form's list), or (``move`` None) confirm the cells drawn on this page that are not ticked. ``shown`` is
    {cell id: version} of exactly the cells this page drew."""
    ticked = {i: v for i, v in shown.items() if st.session_state.get(f"gsel_{scr.case_id}_{i}_{v}")}
    where = f"gallery {group} page {page}"
    if move == DISMISSED_CODE:
        if not ticked:
            _say(scr, "warning", "Tick the images that are not cells first.")
            return
        cells, label, verb = ticked, DISMISSED_CODE, "dismissed as not a cell"
        note = f"dismissed on {where} ({len(ticked)} ticked)"
    elif move:
        target = st.session_state.get(f"gal_target_{scr.case_id}") if move == "other" else move
        if not ticked or not target:
            _say(scr, "warning", "Tick the cells to move first" + (", and choose their class." if not target else "."))
            return
        cells, label, verb = ticked, target, f"moved to {target} ({cell_name(target)})"
        note = f"moved from {group} on {where} ({len(ticked)} ticked)"
    else:
        cells = {i: v for i, v in shown.items() if i not in ticked}
        if not cells:
            _say(scr, "warning", "Every cell on this page is ticked: nothing to confirm. Move the ticked cells instead.")
            return
        label, verb = None, f"confirmed as shown on {where}"
        note = f"confirmed on {where}: {len(cells)} of {len(shown)} cells shown" + \
            (f", {len(ticked)} ticked left out" if ticked else "")
    try:
        res = scr.store.review_cells(scr.case_id, appkit.actor(), cells, label=label, note=note)
    except ConflictError as exc:
        _say(scr, "warning", f"Not saved: {md(exc)}")
        return
    except CaseError as exc:
        _say(scr, "error", f"Not saved: {md(exc)}")
        return
    scr.seen.update(res.changed)
    if res.action_id:
        st.session_state[f"last_action_{scr.case_id}"] = res.action_id
    _say(scr, "warning" if res.skipped else "success", md(res.message(verb)))


def undo_last(scr: Screen) -> None:
    action = st.session_state.get(f"last_action_{scr.case_id}")
    if not action:
        return
    try:
        res = scr.store.undo(scr.case_id, appkit.actor(), action)
    except CaseError as exc:
        _say(scr, "error", f"Not undone: {md(exc)}")
        return
    st.session_state.pop(f"last_action_{scr.case_id}", None)
    scr.seen.update(res.changed)
    _say(scr, "warning" if res.skipped else "success", md(res.message("put back as they were")))


def sign(scr: Screen, expected: dict[int, int], details: dict) -> None:
    """``details``: the case's details as the sign-off box showed them (a typed specimen id is saved against them)."""
    password = st.session_state.get(f"sign_pw_{scr.case_id}")
    st.session_state[f"sign_pw_{scr.case_id}"] = ""  # used once: not kept in the session, the box is emptied
    st.session_state.pop(f"sign_changed_{scr.case_id}", None)
    typed = (st.session_state.get(f"sign_specimen_{scr.case_id}") or "").strip()
    try:
        if typed and not details["specimen"].get("specimen_id"):  # typed at sign-off: stored first (audited)
            scr.store.set_case_details(scr.case_id, appkit.actor(), specimen={**details["specimen"], "specimen_id": typed},
                                   expected={"specimen": details["specimen"]})
        scr.store.sign_off(scr.case_id, appkit.actor(), password=password, expected_versions=expected,
                       no_specimen_id=bool(st.session_state.get(f"sign_nospec_{scr.case_id}")) and not typed,
                       under_target=bool(st.session_state.get(f"sign_under_{scr.case_id}")))
    except ConflictError as exc:
        text = f"Not signed: {md(str(exc).removeprefix('not signed: '))}"
        if exc.changed:  # cells a colleague changed: said beside the sign-off button (the page's messages are at its
            # top, the sign-off at its foot), where this reviewer may acknowledge them, then sign again
            st.session_state[f"sign_changed_{scr.case_id}"] = (exc.changed, text)
        else:
            _say(scr, "warning", text)
    except CaseError as exc:
        _say(scr, "error", f"Not signed: {md(exc)}")
    else:
        _say(scr, "success", f"Case {md(scr.case_code)} signed off by {md(appkit.actor().label)}.")
        scr.seen.clear()  # sign-off bumps every cell's version
        st.session_state.pop(f"last_action_{scr.case_id}", None)  # nothing before a signature is undone


def acknowledge(scr: Screen, changed: dict[int, int]) -> None:
    """The reviewer has read which cells a colleague changed (named in the refusal, now drawn with their new
    labels): take them as scr.seen at the versions the refusal named. Changed again since, the next sign-off refuses
    again."""
    scr.seen.update(changed)
    st.session_state.pop(f"sign_changed_{scr.case_id}", None)
    _say(scr, "info", f"{len(changed)} changed cell(s) taken as checked. Sign again when the case is as it should be.")


def reopen(scr: Screen) -> None:
    if _run(scr, lambda: scr.store.reopen(scr.case_id, appkit.actor(), st.session_state.get(f"reopen_reason_{scr.case_id}", "")),
            f"Case {md(scr.case_code)} reopened."):
        scr.seen.clear()
        st.session_state.pop(f"last_action_{scr.case_id}", None)


def _role(role: str) -> str:
    return ("an " if role[0] in "aeiou" else "a ") + role


def sign_off_box(shown: dict[int, int]) -> None:
    """Sign-off is a deliberate act: only a pathologist (or admin) sees it, and signs with their password (or a
    fresh identity-provider sign-in). The store checks both again, and what the signer confirms: a missing specimen
    id, a count under the target."""
    if not who.can("sign"):
        st.button("Sign off case", key="sign_off", disabled=True,
                  help=f"Signing off needs a pathologist's account; you are {_role(who.role)}.")
        st.caption(f"Only a pathologist signs off; you are {_role(who.role)}.")
        return
    if who.method == "oidc":
        oidc = appkit.oidc_config() or {}
        age = (utcnow() - who.authenticated_at).total_seconds() / 60
        limit = store.policy.reauth_minutes
        if age > limit:
            st.caption(f"To sign, confirm it is you: sign in again with {oidc.get('label', 'your identity provider')} "
                       f"(your sign-in is {age:.0f} min old; a signature needs one from the last {limit:g} min). "
                       f"You come back to the Home page: open case {case.case_code} again and sign.")
            st.button("Sign in again to sign", key="reauth", on_click=st.login, args=(oidc.get("provider"),))
            return
        st.caption(f"Signing as {md(who.label)}, signed in with {oidc.get('label', 'your identity provider')} "
                   f"{age:.0f} min ago.")
    if pending := st.session_state.get(f"sign_changed_{case.id}"):
        changed, text = pending
        st.warning(text + ". The gallery and **One cell** show them as they are now; press the button below once "
                   "you have checked them.")
        st.button(f"I have checked the {len(changed)} changed cell(s)", key="sign_ack", on_click=acknowledge,
                  args=(scr, changed,))
    checks = sign_off_checks(case)
    # one form: the password, a specimen id and the confirmations reach the store together with the click (typed
    # boxes and ticks outside a form each start a rerun, and a click that lands meanwhile could miss one)
    with st.form(f"sign_form_{case.id}", border=False, enter_to_submit=False):
        if who.method != "oidc":
            st.text_input(f"Your password, to sign as {md(who.label)}", type="password", key=f"sign_pw_{case.id}",
                          autocomplete="current-password")
        if checks.no_specimen_id:
            st.text_input("Specimen / accession no. (none entered for this case)", key=f"sign_specimen_{case.id}",
                          max_chars=SPECIMEN_MAX, help="Saved with the case before it is signed (audited)")
            st.checkbox("Sign without a specimen / accession number (recorded in the signature)",
                        key=f"sign_nospec_{case.id}")
        if checks.under_target:
            st.warning(f"Only {checks.counted} of the target {checks.target} cells are counted.")
            st.checkbox(f"Sign with {checks.counted} of {checks.target} cells counted, under the target count "
                        "(recorded in the signature)", key=f"sign_under_{case.id}")
        st.form_submit_button("Sign off case", type="primary", key="sign_off", on_click=sign,
                              args=(scr, shown, case_details(case)))


def running_differential(case) -> None:
    """The count as it stands (reviewers' labels where they exist), what is left to confirm per class, and the
    progress towards the lab's target count."""
    from bmcore.report import DEFAULT_TARGET, case_differential

    d = case_differential(case)
    groups = caserules.gallery_order(case)
    # the target count is stored with the case (every reviewer and the report see the same one)
    wkey = f"_w_target_count_{case.id}"
    target = case.target_count or DEFAULT_TARGET
    st.session_state[wkey] = target
    shown = case.target_count  # sent back with a change: a colleague's change since this draw is a conflict
    left, right = st.columns([3, 1])
    right.number_input("Target count (cells)", min_value=1, max_value=10000, step=100, key=wkey,
                       on_change=lambda: _run(scr, lambda: store.set_case_details(
                           case.id, appkit.actor(), target_count=int(st.session_state[wkey]),
                           expected={"target_count": shown}),
                           f"Target count set to {st.session_state[wkey]} cells for this case."),
                       help="The differential your lab counts to, e.g. 200 or 500 cells; stored with the case")
    right.progress(min(1.0, d.denominator / target), text=f"{d.denominator} of {target} cells counted")
    table = {(caserules.REJECTED_GROUP_NAME if g == caserules.REJECTED_GROUP else g):
             {"cells": len(cells), "to confirm": sum(map(_open, cells)), "flagged": sum(map(caserules.needs_review, cells)),
              "% of count": d.percent_text(g) if g in d.counts else "–"}
             for g, cells in groups}
    left.dataframe(pd.DataFrame(table).astype(str), width="stretch")  # one column per class, in reading order
    left.caption("The count as it stands: reviewers' labels where they exist. Flagged cells count once resolved; "
                 "images the gate would not judge once someone gives them a class (dismissed ones never).")


def gallery(case) -> None:
    """Class by class, a page of thumbnails at a time: tick, move, confirm what is drawn."""
    groups = dict(caserules.gallery_order(case))
    names = list(groups)
    gkey = f"gal_group_{case.id}"
    if st.session_state.get(gkey) not in names:
        st.session_state[gkey] = next((g for g in names if any(map(_open, groups[g]))), names[0])

    def fmt(g: str) -> str:
        if g == caserules.REJECTED_GROUP:
            return f"{caserules.REJECTED_GROUP_NAME} {len(groups[g])} · {sum(map(caserules.rejected_open, groups[g]))} to review"
        if g == DISMISSED_CODE:
            return f"Dismissed, not cells {len(groups[g])} ✓"
        left = sum(map(caserules.unresolved, groups[g]))
        return f"{g} {len(groups[g])}" + (f" · {left} to confirm" if left else " ✓")

    group = st.pills("Class (blasts and flagged classes first)", names, format_func=fmt, key=f"_w_{gkey}",
                     default=st.session_state[gkey], on_change=appkit._store_back, args=(gkey,), required=True) or \
        st.session_state[gkey]
    st.session_state[gkey] = group
    cells = groups[group]
    pages = max(1, -(-len(cells) // GALLERY_PAGE))
    pkey = f"gal_page_{case.id}_{group}"
    page = min(st.session_state.get(pkey) or 1, pages)
    if pages > 1:
        page = st.pills("Page", list(range(1, pages + 1)), default=page, key=f"_w_{pkey}", required=True,
                        on_change=appkit._store_back, args=(pkey,)) or page
    st.session_state[pkey] = page
    drawn = cells[(page - 1) * GALLERY_PAGE: page * GALLERY_PAGE]
    shown = {c.id: c.version for c in drawn}  # exactly what this run draws: the only cells its buttons act on
    classes = list(case.model_classes or [])
    # a class the model lacks that cells of this group often are (bands among segmented neutrophils) comes first
    hinted = list(dict.fromkeys(h for c in drawn for h in caserules.lacks_hint(c, classes)))
    options = list(dict.fromkeys(hinted + classes + [c for c in TASKS["bm21"].classes if c not in classes]))
    if hinted and group in classes:
        st.caption(caserules.hint_text(hinted, group, page=True))
    with st.form(f"gal_{case.id}_{group}_{page}", border=False):
        for row in range(0, len(drawn), GALLERY_COLUMNS):
            cols = st.columns(GALLERY_COLUMNS)
            for col, c in zip(cols, drawn[row: row + GALLERY_COLUMNS]):
                data = c.thumbnail
                if data:
                    col.image(data, width="stretch")
                mark = "⚑ " if caserules.needs_review(c) else "✓ " if c.final_label is not None else ""
                # the model's confidence only beside a label it gave (an image the gate refused has none)
                conf = f" {c.confidence:.2f}" if c.confidence is not None and caserules.status(c) == caserules.OK else ""
                why = "; ".join(caserules.review_reasons(c)) or (f"reviewed by {reviewer_text(c)}" if c.final_label
                                                                 else "not reviewed yet")
                # a one-option toggle, not a checkbox: Streamlit ignores the shortcut keys (1-9, D) while a checkbox
                # or any other input has the focus, so Space-to-tick then a key only works on a button
                col.pills(f"Cell {c.position + 1}", [f"{mark}#{c.position + 1}{conf}"], selection_mode="multi",
                          key=f"gsel_{case.id}_{c.id}_{c.version}", label_visibility="collapsed",
                          help=f"{md(c.name)} · model: {caserules.top3_text(c)} · {md(why)}")
        if group == caserules.REJECTED_GROUP:
            st.markdown(f"The model would not judge these images: they look {caserules.REJECTED_WORDS}. Give each genuine cell "
                        "its class, dismiss the others as not cells; the case is signed only when none is left.")
            st.form_submit_button("Dismiss the ticked images: not cells", shortcut="D",
                                  on_click=gallery_action, args=(scr, shown, group, page, DISMISSED_CODE),
                                  help="Each is kept, marked dismissed by you (audited), and never counted (key D)")
        st.markdown("Move the ticked cells to (keys 1–9):")
        quick = classes[:9]
        for col, (n, k) in zip(st.columns(len(quick) + 1), enumerate(quick, start=1)):
            col.form_submit_button(f"→ {k}", shortcut=str(n), help=f"{cell_name(k)} (key {n})", width="stretch",
                                   on_click=gallery_action, args=(scr, shown, group, page, k))
        o1, o2, b = st.columns([2, 1, 3])
        o1.selectbox("Another class", options, index=None, placeholder="Another class…", label_visibility="collapsed",
                     format_func=lambda k: f"{k} {cell_name(k)}" + ("" if k in classes else " (not a model class)"),
                     key=f"gal_target_{case.id}")
        o2.form_submit_button("→ that class", on_click=gallery_action, args=(scr, shown, group, page, "other"))
        if group != caserules.REJECTED_GROUP:  # nothing there has a class to confirm
            b.form_submit_button(f"Confirm this page: the {len(drawn)} cells shown, less the ticked ones",
                                 type="primary", shortcut="Ctrl+Enter", on_click=gallery_action,
                                 args=(scr, shown, group, page, None))
    st.caption("⚑ needs a person (uncertain, possible blast, hairy-cell flag) · ✓ reviewed · hover ⓘ for a cell's "
               "file name and the model's top 3 · Tab / Space move between and tick cells, 1–9 move the ticked ones, "
               "Ctrl+Enter confirms the page, N opens the next class to confirm. Confirming takes exactly the cells drawn here, at the versions drawn: "
               "a cell changed by a colleague since, or classified after the page was drawn, is left alone and named.")
    u1, u0, u2 = st.columns([3, 2, 5])  # wide enough for "Undo my last gallery action" whole
    u1.button("Undo my last gallery action", key="gal_undo", on_click=undo_last, args=(scr,),
              disabled=not st.session_state.get(f"last_action_{case.id}"))
    todo = [g for g in names if g != group and any(map(_open, groups[g]))]
    u0.button("Next class to confirm", key="gal_next", shortcut="N", disabled=not todo,
              on_click=lambda: st.session_state.update({gkey: todo[0], f"_w_{gkey}": todo[0]}) if todo else None)
    pick = u2.selectbox("Look closer at a cell of this page", [c.id for c in drawn], index=None,
                        placeholder="Choose a cell for its heatmap and probabilities…",
                        format_func=lambda i: next(f"#{c.position + 1} {clean(c.name)}" for c in drawn if c.id == i),
                        key=f"gal_closer_{case.id}")
    if pick is not None:
        closer(case, next(c for c in drawn if c.id == pick))


def _open(cell) -> bool:
    """Left for a person: a classified cell without a reviewer's label, or an image the gate would not judge that
    nobody has given a class or dismissed."""
    return caserules.unresolved(cell) or caserules.rejected_open(cell)


def closer(case, cell) -> None:
    """One cell of the gallery, larger, with the case model's heatmap for its label and the top 3."""
    data = appkit.image_bytes(case.id, cell)
    left, mid, right = st.columns([1, 1, 2])
    if data:
        left.image(data, width="stretch", caption=f"#{cell.position + 1} {md(cell.name)}")
    path = appkit.case_bundle_path(case)
    code = cell.label or cell.predicted
    if data and path is not None and code in (case.model_classes or []):
        from bmcore.explain import overlay

        cam, rgb, shown_code = appkit.heatmap(str(path), data, code, "gradcam")
        mid.image(overlay(rgb, cam, 0.45), width="stretch",
                  caption=cam_caption("gradcam", shown_code, cell_name(shown_code), appkit.case_model(case)))
    right.write("Model: " + " · ".join(f"**{k}** {cell_name(k)} {v:.2f}" for k, v in caserules.top3(cell)))
    why = caserules.review_reasons(cell)
    if why:
        right.info("Needs your review: " + ", ".join(why) + ".")
    if cell.final_label is not None:
        right.caption(f"Reviewed: {md(cell.final_label)} by {md(reviewer_text(cell))}")


def one_cell(queue: list) -> None:
    """The one-cell review: picker, crop, top-3, label box, Confirm / Save."""
    st.markdown("#### Review a cell")
    by_id = {c.id: c for c in queue}
    ids = [c.id for c in queue]
    chosen = st.session_state.get(PICK)
    if chosen not in by_id:
        chosen = ids[0]
    st.session_state[PICK] = st.session_state[WPICK] = chosen

    def label_of(cid: int) -> str:
        # Only what is fixed once a cell is classified: the browser sends the chosen option back as this text, so a
        # text that changed under a stale screen (someone reviewed the cell meanwhile) would no longer name its cell.
        c = by_id[cid]
        flags = caserules.model_flags(c)
        if caserules.status(c) == caserules.REJECTED:  # no label of the model's: its confidence is not shown
            return f"#{c.position + 1} {clean(c.name)} — NOT JUDGED BY THE GATE: {c.reject_reason}"
        tail = f" · {', '.join(flags).upper()}" if flags else ""
        conf = f" ({c.confidence:.2f})" if c.confidence is not None else ""
        return f"#{c.position + 1} {clean(c.name)} — model: {c.predicted}{conf}{tail}"

    st.selectbox("Cell (flagged and uncertain first, then unreviewed)", ids, format_func=label_of, key=WPICK,
                 on_change=appkit._store_back, args=(PICK, ids))
    cell = by_id[chosen]
    seen.setdefault(cell.id, cell.version)  # the version this reviewer opened
    seen_v = seen[cell.id]
    nxt = caserules.next_cell_id(queue, cell.id)
    left, right = st.columns([1, 2])
    data = appkit.image_bytes(case.id, cell)
    if data:
        left.image(data, width="stretch", caption=f"#{cell.position + 1} {md(cell.name)}")
    if cell.version != seen_v:
        right.warning(f"#{cell.position + 1} changed since you opened it: now **{md(cell.label or 'unlabelled')}**"
                      + (f", set by {md(reviewer_text(cell))}" if cell.reviewed_by else "")
                      + ". Your actions on it are refused until you reload it.")
        right.button("Reload this cell", key=f"reload_{cell.id}", on_click=reload_cell, args=(scr, cell.id, cell.version))
    if caserules.rejected_open(cell):
        right.warning(f"The model would not judge this image ({cell.reject_reason}): it looks unlike its training "
                      "crops. If it is a cell, give it its class; if not, dismiss it. The case is signed only once "
                      "every such image is resolved.")
    why = caserules.review_reasons(cell)
    if why:
        right.info("Needs your review: " + ", ".join(why) + ".")
    right.write("Model: " + " · ".join(f"**{k}** {cell_name(k)} {v:.2f}" for k, v in caserules.top3(cell)))
    if cell.final_label is not None:
        right.caption(f"Reviewed: {md(cell.final_label)} by {md(reviewer_text(cell))}")
    model_classes = list(case.model_classes or [])
    hint = caserules.lacks_hint(cell, model_classes)
    if hint and cell.final_label is None:
        right.info(caserules.hint_text(hint, cell.predicted))
    # the classes the model lacks that such a cell often is come first, then the model's, then the rest
    options = hint + [c for c in model_classes + list(TASKS["bm21"].classes) if c not in hint]
    options = list(dict.fromkeys(options))
    right.selectbox("Label", options, index=options.index(cell.label) if cell.label in options else 0,
                    format_func=lambda c: f"{c} {cell_name(c)}" + ("" if c in model_classes else " (not a model class)"),
                    key=label_key(case.id, cell.id, seen_v))
    b1, b2, b3 = right.columns(3)
    b1.button("Confirm model's label", key="confirm_btn", on_click=review,
              args=(scr, cell.id, cell.position + 1, seen_v, None, cell.predicted, nxt),
              disabled=caserules.status(cell) != caserules.OK or (cell.final_label == cell.predicted))
    b2.button("Save label", key="save_btn", type="primary", on_click=review,
              args=(scr, cell.id, cell.position + 1, seen_v, "chosen", cell.predicted, nxt))
    if caserules.status(cell) == caserules.REJECTED:
        b3.button("Dismiss: not a cell", key="dismiss_btn", on_click=review,
                  args=(scr, cell.id, cell.position + 1, seen_v, DISMISSED_CODE, cell.predicted, nxt),
                  disabled=caserules.dismissed(cell))
    if msg_where == "one" and msg:  # the answer to these buttons, where the reviewer is looking
        getattr(right, kind)(msg)


kind, msg = st.session_state.pop("review_msg", (None, None)) if st.session_state.get("review_msg_case") == case.id \
    else (None, None)
st.session_state.pop("review_msg", None)
msg_where = st.session_state.pop("review_msg_where", "top")
if msg and (msg_where != "one" or st.session_state.get(f"review_mode_{case.id}") != "One cell"):
    getattr(st, kind)(msg)

appkit.job_banner(case)
summ = caserules.summary(case)
signed = case.status == STATUS_SIGNED
signer = signer_text(case) if signed else ""
st.subheader(f"Case {md(case.case_code)}: " + (f"signed off by {md(signer)}" if signed else "open"))
if not who.can("review"):
    st.info(f"You are signed in as {_role(who.role)}: you can read this case, its cells and its audit trail. "
            "Reviewing needs a technologist's account; signing off a pathologist's.")
st.caption(f"Classified by **{appkit.case_model(case)}**" + (f" ({inference_text(case)})" if inference_text(case) else "")
           + f" · {caserules.case_review_rules(case).describe()}")
m1, m2, m3, m4, m5 = st.columns(5)
m1.metric("Reviewed", f"{summ.reviewed} / {summ.classified}")
m2.metric("Need review, unresolved", summ.needs_review,
          help="Uncertain, possible blast or hairy-cell flag: only a person may resolve these")
m3.metric("Not judged, to review", f"{summ.rejected_open} of {summ.rejected}",
          help="Images the model would not judge (they look unlike its training crops): give each a class or dismiss "
               "it as not a cell; the case is signed only once none is left")
m4.metric("Unreadable files", summ.unreadable)
m5.metric("Not classified yet", summ.pending)
appkit.code_key(list(case.model_classes or []) + [c.label for c in case.cells if c.label]
                + [c for c in TASKS["bm21"].classes if c not in (case.model_classes or [])] + [DISMISSED_CODE],
                "What the class codes mean (the model's classes, then every class a reviewer may give)")

queue = caserules.review_queue(case)
if not signed and not queue:
    st.info("This case has no classified cell to review yet" + (" (classification is running or was interrupted)."
                                                                 if summ.pending else "."))
mode = "One cell"
if not signed and queue and who.can("review"):
    mode = st.segmented_control("Review", ["Gallery by class", "One cell"], default="Gallery by class",
                                key=f"review_mode_{case.id}") or "Gallery by class"
    running_differential(case)
if not signed and queue and who.can("review") and mode == "Gallery by class":
    gallery(case)
if not signed and queue and who.can("review"):
    if mode == "One cell":
        one_cell(queue)
    st.markdown("#### Sign-off")
    c1, c2 = st.columns(2)
    # the versions this reviewer opened where they opened a cell, else as this page shows it
    shown = {c.id: seen.get(c.id, c.version) for c in case.cells}
    with c1:
        sign_off_box(shown)
    blockers = caserules.sign_off_blockers(case)
    if blockers:
        st.caption("Sign-off needs: " + md("; ".join(blockers)) + ".")
elif signed:
    st.success(f"Signed off by {md(signer)} on {case.signed_at:%Y-%m-%d %H:%M} UTC. "
               "Reopen it to change cells (the reopening is audited).")
    if case.signature:
        st.caption("Signature: " + md(signature_text(case.signature)))
    if who.can("reopen"):
        st.text_input("Reason for reopening", key=f"reopen_reason_{case.id}")
        st.button("Reopen case", key="reopen", on_click=reopen, args=(scr,))

st.markdown("#### Audit trail")
audit = store.audit(case.id, appkit.actor())
full = len(audit) <= 50 or st.toggle(f"Show all {len(audit)} events (newest last)", key=f"audit_all_{case.id}")
if not full:
    st.caption(f"The last 50 of {len(audit)} events; the printable report (Export) holds all of them.")
st.dataframe(pd.DataFrame(audit if full else audit[-50:]), hide_index=True, width="stretch")
