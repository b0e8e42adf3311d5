import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import appkit
from bmcore.comparison import reproduce_command
from bmcore.ood import MAX_CROP_SCALE
from bmcore.tasks import cell_name
from bmcore.triage import ReviewRules, rules_for_model

st.title("Model card")
appkit.ruo_banner()
pred = appkit.predictor()
b = pred.bundle
m = b.meta
tr = m.get("training", {})
met = m.get("metrics", {})
st.subheader(m.get("name", b.path.name))
st.markdown(f"""
**Intended use.** {m.get('intended_use', '')}
{m.get('statement', '')}

**Not for:** diagnosis without expert review; whole-slide images (a smear-field photograph is cut into its cells
first, on the Classify page); peripheral blood smears, other stains or magnifications; classes the model was not
trained on (below).
""")
c1, c2, c3, c4 = st.columns(4)
c1.metric("Backbone", m.get("timm_name", b.backbone))
c2.metric("Parameters", f"{m.get('parameters', 0) / 1e6:.2f} M")
c3.metric("Input", f"{b.data_config.input_size} px")
c4.metric("Inference", f"{'ONNX' if pred.engine == 'onnx' else 'torch'} {pred.precision}",
          help=f"What this server runs for new classifications: {pred.setting}" +
               (f" (the bundle's choice could not run here: {pred.fallback})" if pred.fallback else ""))
st.caption(f"Predictions: {pred.setting}" + (" (test-time augmentation: the mean over the crop, its two mirror images "
                                               "and its transpose)." if pred.tta else ": one view of each crop."))
st.markdown(f"**Task** `{m['task']}` · **covers** " + ", ".join(f"{c} ({cell_name(c)})" for c in b.classes))
if b.missing_classes():
    st.warning("**Not covered** (no training images): " + ", ".join(f"{c} ({cell_name(c)})" for c in b.missing_classes())
               + ". A cell of these types is forced into one of the covered classes.")
st.markdown("#### Performance")
if met:
    st.write(f"On the **{met['split']}**, never used for training or model selection. Image-level split: file names "
             "carry no patient id, so crops of one patient may sit on both sides and these figures may be optimistic.")
    k1, k2, k3, k4 = st.columns(4)
    k1.metric("Accuracy", f"{met['accuracy']:.3f}")
    k2.metric("Macro-F1", f"{met['macro_f1']:.3f}")
    if "balanced_accuracy" in met:
        k3.metric("Balanced accuracy", f"{met['balanced_accuracy']:.3f}")
    elif met.get("refusal") is not None:  # a model learnt from the lab: measured with its refusals
        k3.metric("Refused by the gate", f"{met['refusal']:.1%}")
    if "ece" in met:
        k4.metric("Calibration error (ECE)", f"{met['ece']:.3f}", help=f"before temperature scaling: "
                                                                         f"{met.get('ece_before_temperature', float('nan')):.3f}")
    st.dataframe(pd.DataFrame([{"class": c, "name": cell_name(c), "F1": v} for c, v in met["per_class_f1"].items()]),
                 hide_index=True)
else:
    st.info("This bundle carries no test metrics.")
inf = m.get("inference", {})
if inf.get("settings"):
    st.markdown("#### Inference settings measured")
    st.write(f"Chosen on the {inf['selected_on']}: {inf['rule']}. Speed: {inf['timed_on']}, on the machine that "
             "exported the bundle. Test figures: the test split of the same split file, never used to rank.")
    st.dataframe(pd.DataFrame([{"engine": r["engine"], "precision": r["precision"], "TTA": "4 views" if r["tta"] else
                                "off", "val macro-F1": round(r["val_macro_f1"], 4),
                                "test macro-F1": round(r["test_macro_f1"], 4),
                                "ms per cell (forward)": round(r["forward_ms_per_cell"], 2),
                                "default": "✓" if (r["engine"], r["precision"], r["tta"]) ==
                                (inf["engine"], inf["precision"], inf["tta"]) else ""} for r in inf["settings"]]),
                 hide_index=True)
    if inf.get("rejected_candidate"):
        rc = inf["rejected_candidate"]
        st.caption(f"Not the default: {rc['engine']} {rc['precision']}, TTA {'on' if rc['tta'] else 'off'} — "
                   f"{rc['why']}.")
st.markdown("#### Calibration")
cal = m.get("calibration", {})
st.write(f"Temperature {cal.get('temperature', 1.0):.3f}, fitted on the {cal.get('fitted_on', 'n/a')}. Confidences "
         "shown in the app are temperature-scaled probabilities.")
st.markdown("#### Images it will not judge")
ood = m.get("ood")
if ood:
    ev_path = b.path / "eval_ood.json"
    # the measured figures are eval_ood.json's (a bundle from before it kept some of them in bundle.json)
    ev = {**ood, **(json.loads(ev_path.read_text()) if ev_path.is_file() else {})}
    t = ev.get("test_as_run")
    rate = t["rate"] if t else ev["test_rejection"]
    how = (f"{t['refused']} of {t['crops']} crops of the {t['split']}, as the app runs it ({t['setting']}); 95% "
           f"interval {t['ci95'][0]:.1%}–{t['ci95'][1]:.1%}" if t else "setting not recorded")
    st.write(f"An image over {MAX_CROP_SCALE:g} times the side of the training crops ({b.crop_side} px: at most "
             f"{round(MAX_CROP_SCALE * b.crop_side)} px) is refused before the model sees it, as a camera field or a "
             "mosaic of cells. A gate in front of the classifier then refuses blank, out-of-focus and unfamiliar "
             "images (unlike its training crops; some genuine cells among them, which a reviewer then classifies) "
             "instead of giving them a class. Fitted on the "
             f"{ev['fitted_on']}; threshold set on the {ev['calibrated_on']} to refuse {ev['val_rejection']:.1%} of it. "
             f"On the test split (never used by the gate) it refuses **{rate:.1%}** of real crops ({how}).")
    g1, g2, g3 = st.columns(3)
    g1.metric("Real test crops refused", f"{rate:.1%}", help=how)
    g2.metric("Out-of-distribution images refused", f"{ev.get('ood_refused', float('nan')):.0%}",
              help=f"{ev['ood_images']} generated or packaged images (fields, other magnification, blur, blank, "
                   "photos, another stain, screenshots, noise)")
    g3.metric("AUROC, unfamiliar vs real", f"{ev['auroc']['gate']:.3f}",
              help="max-softmax baseline: " + f"{ev['auroc'].get('max_softmax_baseline', float('nan')):.3f}")
    kinds = {**ev.get("by_kind", {}), **ev.get("input_size_rule", {}).get("mosaics", {})}
    if kinds:
        st.dataframe(pd.DataFrame([{"kind": k, "images": v["n"], "refused": f"{v['refused']:.0%}",
                                    "AUROC vs test": round(v["auroc_vs_test"], 3) if "auroc_vs_test" in v else None}
                                   for k, v in kinds.items()]), hide_index=True)
    blood = ev.get("peripheral_blood")
    if blood:
        st.metric("Peripheral-blood white cells passed with a confident label",
                  f"{blood['passed_confident']} of {blood['crops']}",
                  help=f"{blood['data']}; {blood['crop']}. Confident: {blood['confident']}.")
        st.caption(f"Real peripheral-blood white cells: {blood['passed']} of {blood['crops']} pass the gate, "
                   f"{blood['passed_confident']} with a confident label: the gate does not keep peripheral blood out. "
                   "A passed gate means the image looks like the training crops, not that it is suitable: the gate "
                   "has not seen other stains or other scanners.")
    else:
        st.caption("A passed gate means the image looks like the training crops, not that it is suitable: the gate has "
                   "never seen real peripheral-blood crops, other stains or other scanners.")
else:
    st.info("This bundle has no out-of-distribution gate: every readable image gets a class.")
st.markdown("#### Which cells go to review")
tri = m.get("triage") or {}
if tri.get("rules") and tri.get("test"):
    rules = ReviewRules.from_dict(tri["rules"])
    crit = "".join(f", or when its calibrated probability of being a {cell_name(c).lower()} ({c}) is at least "
                   f"**{t:.3f}** whatever its top class" for c, t in sorted(rules.critical.items()))
    st.write(f"A cell goes to review when its calibrated confidence is under **{rules.uncertain_below:.2f}**{crit}. "
             f"The other cells are confirmed class by class in the review gallery. Images the gate refuses get no class and need no review; "
             f"they are left out of these figures. Rule {rules.source}.")
    te = tri["test"]
    where = f"test split, {te['n']} crops"
    note = (f"{where}: never used to choose the rule; {te['gate_rejected']} refused by the gate and left out, "
            f"figures over the other {te['n_accepted']}")

    def pct(v):
        return "n/a" if v is None else f"{v:.1%}"

    r1, r2 = st.columns(2)  # two rows of two: four in a row cut "92.7% (101/109)" short
    r3, r4 = st.columns(2)
    r1.metric("Sent to review", pct(te["review_fraction"]), help=f"{te['review']} of {te['n_accepted']} cells; {note}")
    r2.metric("Auto-accepted accuracy", pct(te["auto_accuracy"]),
              help=f"{te['auto_accepted']} cells not sent to review; goal: {tri.get('goal', 'n/a')}; {note}")
    r3.metric("Errors caught", f"{pct(te['errors_caught_fraction'])} ({te['errors_caught']}/{te['errors']})",
              help=f"misclassified cells sent to review, of all misclassified cells; {note}")
    if te.get("blast_sensitivity") is not None:
        r4.metric("Blast sensitivity", f"{pct(te['blast_sensitivity'])} ({te['blasts_flagged']}/{te['blasts']})",
                  help=f"true blasts whose calibrated P(blast) reached the blast rule's threshold; "
                       f"{te['blasts_auto_as_nonblast']} blasts auto-accepted as another class; {note}")
    goal_acc, goal_sens = float(tri.get("goal_accuracy", 0.97)), float(tri.get("goal_blast_sensitivity", 0.95))
    missed = []
    if te.get("auto_accuracy") is not None and te["auto_accuracy"] < goal_acc:
        missed.append(f"auto-accepted cells {te['auto_accuracy']:.1%} correct, under the {goal_acc:.0%} goal")
    if te.get("blast_sensitivity") is not None and te["blast_sensitivity"] < goal_sens:
        missed.append(f"the blast rule sent {te['blasts_flagged']} of {te['blasts']} true blasts "
                      f"({te['blast_sensitivity']:.1%}) to review, under the {goal_sens:.0%} goal it meets on the "
                      "val split")
    if missed:
        st.warning(f"**Goal not reached on the {where}:** " + "; ".join(missed) + ".")
    st.caption(f"All four figures: {where}, never used to choose the rule ({te['gate_rejected']} crops refused by "
               f"the gate left out). On the {tri['val']['split'] if tri.get('val') else 'val split'}, where the rule "
               f"was chosen: sent to review {pct((tri.get('val') or {}).get('review_fraction'))}, auto-accepted "
               f"accuracy {pct((tri.get('val') or {}).get('auto_accuracy'))}.")
    ev_path = b.path / "eval_triage.json"
    ev = json.loads(ev_path.read_text()) if ev_path.is_file() else {}
    if ev.get("test", {}).get("old_rule"):
        rows = []
        for label, fig_s in (("this rule", ev["test"]["rule"]),
                             ("old built-in default (under 0.50, no blast rule)", ev["test"]["old_rule"])):
            rows.append({"rule (test split)": label, "sent to review": pct(fig_s["review_fraction"]),
                         "auto-accepted accuracy": pct(fig_s["auto_accuracy"]),
                         "errors caught": f"{fig_s['errors_caught']}/{fig_s['errors']}",
                         "blasts reviewed": f"{fig_s['blasts_reviewed']}/{fig_s['blasts']}",
                         "blasts auto-accepted as non-blast": fig_s["blasts_auto_as_nonblast"]})
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    curves = {k: ev[k]["risk_coverage"] for k in ("val", "test") if ev.get(k, {}).get("risk_coverage")}
    if curves:
        fig = go.Figure()
        for k, c in curves.items():
            fig.add_trace(go.Scatter(x=c["coverage"], y=c["error_auto"], mode="lines", name=f"{k} split",
                                     customdata=c["uncertain_below"],
                                     hovertemplate="confidence ≥ %{customdata:.2f}<br>auto-accepted %{x:.1%}"
                                                   "<br>error %{y:.1%}<extra>" + k + "</extra>"))
            i = min(range(len(c["uncertain_below"])), key=lambda j: abs(c["uncertain_below"][j] - rules.uncertain_below))
            fig.add_trace(go.Scatter(x=[c["coverage"][i]], y=[c["error_auto"][i]], mode="markers",
                                     marker={"size": 12, "symbol": "star"}, name=f"chosen rule, {k}"))
        goal_err = 1 - float(ev.get("goal_accuracy", 0.97))
        fig.add_hline(y=goal_err, line_dash="dot", annotation_text=f"goal: error ≤ {goal_err:.0%}")
        fig.update_layout(xaxis_title="coverage (share of gate-accepted cells auto-accepted)",
                          yaxis_title="error among auto-accepted cells", xaxis_tickformat=".0%",
                          yaxis_tickformat=".0%", height=380, margin={"t": 30})
        st.plotly_chart(fig, width="stretch")
        st.caption("Risk-coverage: each point is a confidence threshold (0.00 to 1.00) with the blast rule on. "
                   "A lower threshold sends fewer cells to review and lets more errors through unflagged.")
    st.caption("A confidence threshold set by the user replaces the fitted one (each case stores the rule it was "
               "classified under); the figures above then no longer describe the rule in force.")
else:
    st.info(f"No review rule was fitted for this model: the built-in default applies "
            f"({rules_for_model(m, b.classes).describe(source=False)}; a blast threshold sends a cell to review whatever "
            "its top class). It was not fitted or validated for this model on held-out data.")
st.markdown("#### Training")
if tr:
    data = tr.get("data", {})
    st.write(f"{tr.get('epochs_run')} epochs (the weights kept are those of epoch {tr.get('best_epoch')}, the best on "
             f"the validation split), {tr.get('train_seconds', 0) / 60:.0f} min on {tr.get('hardware')}. Trained on "
             f"the train split of the bone marrow crops ({sum((data.get('train') or {}).values())} crops), selected on "
             f"its val split ({data.get('val')} crops); the test split was read once, for the figures above."
             + (f" {tr['data_note']}" if tr.get("data_note") else ""))
    if tr.get("teachers"):
        st.write("It learnt partly from the soft labels of other models (distillation): " + ", ".join(
            f"{t['name']} (weights {t['weights_sha256'][:8]})" for t in tr["teachers"]) + ".")
if b.lineage:
    lin = b.lineage
    st.markdown("#### Where this model learnt from")
    st.write(f"Learnt from **{lin.parent_name or 'a bundle'}** (weights {lin.parent_sha256[:8] or 'not recorded'}) on "
             f"{lin.learnt_at}: {lin.method}.")
    st.dataframe(pd.DataFrame([{"data": d.description, "kind": d.kind, "cells": d.cells,
                                "per class": ", ".join(f"{k} {n}" for k, n in sorted(d.classes.items()))}
                               for d in lin.data]), hide_index=True)
st.markdown("#### Provenance")
st.write(f"Weights sha256 `{b.sha256}` (verified when loaded).")
st.caption("Data: Matek C. et al., An Expert-Annotated Dataset of Bone Marrow Cytology in Hematologic Malignancies, "
           "TCIA 2021 (doi 10.7937/TCIA.AXH3-T579); Blood 2021;138(20):1917.")
with st.expander("Engineering details"):
    st.caption("For whoever retrains or audits the model: how the run was started, its full configuration, the "
               "library versions and bundle.json as stored.")
    if tr:
        cmd, differs = reproduce_command(tr.get("command", ""))
        st.write(f"Weights started from: `{tr.get('weights_source')}`. Data: `{tr.get('data', {}).get('root')}`, "
                 f"split file `{tr.get('data', {}).get('splits')}`.")
        st.caption("Reproduce this run with:" + (f" ({differs})" if differs else ""))
        st.code(cmd, language="bash")
        st.json(tr.get("config", {}), expanded=False)
    st.write("Library versions: " + ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()))
    st.json(m, expanded=False)
