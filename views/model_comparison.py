import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

import appkit
from bmcore.bundle import Bundle, pick_default
from bmcore.comparison import (PRETRAINED, SCRATCH, budget_changes, budget_text, by_epochs, epochs_text, find_studies,
                               lesson_facts, like_with_like, load_results, load_summary, published_figure,
                               reproduce_command, result_from_bundle, study_hardware, study_label, weights_group,
                               weights_label)
from bmcore.text import md

SHORT = 20  # epochs: below this a from-scratch network has not finished learning
COLOURS = {PRETRAINED: "#1f77b4", SCRATCH: "#ff7f0e"}
MARGIN = dict(l=10, r=10, t=40, b=10)


def deployed_result() -> dict | None:
    """The deployed model (the bundle marked DEFAULT) as a comparison row, read from its own eval_test.json."""
    path = pick_default(appkit.available_bundles())
    meta = appkit.installed_bundles().get(path)
    return result_from_bundle(Bundle(path, meta)) if meta else None


def detail_on_deployed() -> None:
    """Another study: its detail view opens on the deployed model again. The choice is set, not dropped: a browser
    sends the widget's last value back with the rerun, so a dropped key would come back as the old model."""
    d = deployed_result()
    if d:
        st.session_state["cmp_model"] = d["title"]
    else:
        st.session_state.pop("cmp_model", None)


st.title("Model comparison")
appkit.ruo_banner()
st.write("Models trained on the same split with the same budget (the same settings, and where a study says so the "
         "same training time) and measured the same way, so that their differences come from the architecture and "
         "its starting weights, beside the model this app runs.")

studies = find_studies(os.environ.get("BM_COMPARISON_ROOT") or appkit.ASSETS)
labels = {str(f): study_label(load_summary(f), load_results(f)) for f in studies}
if labels:
    folder = Path(st.selectbox("Study", list(labels), format_func=labels.get, key="cmp_study",
                               help="Each study is one training budget for every run; the longest budget is "
                                    "shown first.",
                               on_change=detail_on_deployed))
    summary, results = load_summary(folder), load_results(folder)
else:
    st.info("No comparison study is committed yet; only the deployed model's own test evaluation is shown.")
    summary, results = {}, []
budget = summary.get("budget", {})
deployed = deployed_result()
rows = ([deployed] if deployed else []) + results
if summary:
    st.markdown(f"**Budget of this study, the same for every run** (unless its row says otherwise): "
                f"{budget_text(budget)}. Trained on {study_hardware(summary, results)}. Data: "
                f"{summary.get('data')}, split file `{summary.get('split')}`; the best epoch was chosen on its "
                f"validation part, and every figure of this study is measured on its test part "
                f"(config `{summary.get('config')}`).")
    if summary.get("note"):
        st.caption(summary["note"])
# what the runs really got: a time guard can end a run before the budget's epochs
fewest = min([r["epochs"] for r in results if r.get("epochs")] or [budget.get("epochs") or 0])
cut = " (the fewest any run here got)" if fewest < (budget.get("epochs") or 0) else ""
if summary and fewest < SHORT:
    st.warning(f"{fewest} epochs{cut} is far too short for from-scratch networks: a low score here says "
               "the network had not learned yet, not that the architecture is poor. Compare architectures within "
               "the ImageNet-initialised group, or in a study with a longer budget.")
if not rows:
    st.stop()

facts = lesson_facts(rows)
pub = pd.read_csv(appkit.ASSETS / "published" / "seeds_published.csv", dtype={"seed": str})
published = pub.to_dict("records")


def started(group: str, label: str) -> str:
    """``label`` and the rows of one starting-weights group with the epochs each got, in reading order (best first);
    where the study's rows of the group all got the same epochs, said once in the label."""
    members = sorted((r for r in rows if weights_group(r.get("weights_source", "")) == group),
                     key=lambda r: -r["metrics"]["macro_f1"])
    alike = {r.get("epochs") for r in members if r is not deployed}
    each = next(iter(alike)) if len(alike) == 1 and None not in alike and len(members) > 1 else None
    return (label + (f", {each} epochs each" if each else ", with the epochs each got") + ": "
            + "; ".join(md(r["title"]) + (f": {r.get('epochs')}, its own recipe" if r is deployed else
                                          "" if each else f": {r.get('epochs')}" if r.get("epochs") else "")
                        for r in members))


def pct(seed: str, model: str, metric: str) -> str:
    v = published_figure(published, seed, model, metric)
    return "?" if v is None else f"{v:.0%}"


n_classes = next((int(m) for m in pub[pub.seed == "000"].task.str.extract(r"(\d+) classes")[0].dropna()), None)
vgg_here = next((r for r in results if r.get("backbone") == "vgg16" and
                 weights_group(r.get("weights_source", "")) == SCRATCH), None)
shah_val = [float(v) for m, v in pub[(pub.seed == "003") & (pub.metric == "val_accuracy")][["model", "value"]]
            .itertuples(index=False) if "custom" not in m.lower()]
with st.expander("Reading this page: what it can and cannot show", expanded=True):
    lo_hi = facts["scratch_epochs"]
    epochs_words = "" if not lo_hi else (f" for {lo_hi[0]} epochs" if lo_hi[0] == lo_hi[1] else
                                         f" for {lo_hi[0]} to {lo_hi[1]} epochs")
    st.markdown(
        f"- **Most of the difference is the starting point, not the architecture.** Of the {facts['networks']} "
        f"networks shown, {facts['scratch']} started from random weights and were trained{epochs_words}"
        + (f" ({'all' if facts['scratch_under_20'] == facts['scratch'] else facts['scratch_under_20']} of them "
           "under 20, when a network trained from scratch has usually not finished learning)"
           if facts["scratch_under_20"] else "")
        + f"; {facts['pretrained']} started from ImageNet weights, so they could already see edges and textures. "
        "A bar chart that mixes the two invites the wrong lesson (\"MobileNetV2 beats ConvNeXt\"): it only says "
        "that a network that starts knowing something learns faster. Compare architectures within one colour, "
        "or in the *Compare like with like* view below.\n"
        + "".join(f"  - {started(g, label)}\n" for g, label in
                  ((PRETRAINED, "From ImageNet weights"), (SCRATCH, "From random weights"))
                  if any(weights_group(r.get("weights_source", "")) == g for r in rows)) +
        "- **One training run per network.** A second run with another random seed moves a figure by a few points, "
        "so small gaps between two bars mean nothing.\n"
        "- **One laboratory's images, split image by image.** The test crops come from the same lab, stain and "
        "camera as the training crops, and the same patients can appear on both sides. Expect lower figures on "
        "another lab's slides.\n"
        "- **What published work reports** (the table at the bottom), each on its own data, classes and split, so "
        "none can be ranked against another or against this page:\n"
        "  - Raza, Umer and Hussain, *Fine-Grained Classification of Bone Marrow Blood Cells Using ResNet-50 CNN "
        f"& Pretrained ViT Transformer* (course report): on 14 classes of marrow cells ResNet-50 classified "
        f"{pct('001', 'ResNet-50', 'accuracy')} of the test cells correctly, a ViT-B/16 pretrained on ImageNet-21k "
        f"{pct('001', 'ViT-B/16 (in21k)', 'accuracy')}. The two did not start from the same weights, so the gap is "
        "not the architecture alone.\n"
        "  - Joshi, *Bone Marrow Cell Classification using Deep Learning* (README on GitHub): EfficientNetB7 at "
        f"about {pct('000', 'EfficientNetB7', 'accuracy')} and **VGG16 at about {pct('000', 'VGG16', 'accuracy')}**"
        ". The README gives no class count, split, number of epochs or starting weights."
        + (f" On the {n_classes}-class task the project lists it under, guessing gets about {1 / n_classes:.0%} "
           f"(1 in {n_classes}), so {pct('000', 'VGG16', 'accuracy')} means that VGG16 run learned next to nothing: "
           "a training run that failed, not evidence that VGG16 cannot tell marrow cells apart." if n_classes else "")
        + " Started from pretrained weights, VGG16 "
        f"reached {pct('003', 'VGG16', 'val_accuracy')} in Shah, Nadar and Kanikar (validation accuracy, 7 classes)"
        + (f"; trained from scratch in this study, {vgg_here['metrics']['accuracy']:.0%} test accuracy in "
           f"{vgg_here.get('epochs')} epochs" if vgg_here else "") + ".\n"
        "  - Shah, Nadar and Kanikar (2025), *Automated Classification of Cells from Bone Marrow Cytology with Deep "
        "Learning*, Research Journal of Pharmacy and Technology 18(2): 7 classes chosen to find hairy cells; "
        + (f"{len(shah_val)} pretrained networks reached {min(shah_val):.0%} to {max(shah_val):.0%} validation "
           f"accuracy, their own small network trained from scratch "
           f"{pct('003', 'Custom CNN (Sequential)', 'val_accuracy')}. " if shah_val else "")
        + "These are validation figures: the paper keeps no separate test set.\n"
        f"  - Sharif (2024), *Blood Cell Classification using Deep Learning* (course README): "
        f"{pct('004', 'EfficientNet-B0 + SE', 'accuracy')} test accuracy for an EfficientNet-B0 with "
        "squeeze-and-excitation, on 8 classes of peripheral blood cells, not bone marrow.\n"
        "  - A fifth README (a small network against a frozen ResNet50) leaves its results table empty.")

splits = sorted({r["split"] for r in rows})
where = (f"the {splits[0]}" if len(splits) == 1 else "each row's own test split (column 'measured on')") \
    + ", an image-level split (file names carry no patient id)"
NOT_SHOWN = "It does not show how a model does on other labs' stains and scanners, or on classes absent from bm-dev."


def guarded(r: dict, changed: str) -> bool:
    """Did the study's time guard end this run before the budget's epochs (not its own epochs setting)?"""
    return bool(budget.get("time_budget_s") and budget.get("epochs") and r.get("epochs")
                and r["epochs"] < budget["epochs"] and "epochs" not in changed)


def row(r: dict) -> dict:
    m = r["metrics"]
    worst = min(m["per_class"].items(), key=lambda kv: kv[1]["f1"])
    changed = budget_changes(r, budget)
    return {"model": r["title"], "group": weights_group(r.get("weights_source", "")), "macro-F1": m["macro_f1"],
            "accuracy": m["accuracy"], "balanced acc.": m["balanced_accuracy"],
            "min class F1": f"{worst[1]['f1']:.2f} ({worst[0]})", "ECE": m["ece"],
            "weights": weights_label(r.get("weights_source", "")), "px": r["img_size"], "epochs": r.get("epochs"),
            "trained with": "its own recipe (deployed model)" if r is deployed else
            "study budget" + (f", {changed}" if changed else "")
            + (f", stopped by the time guard at {r['epochs']} of {budget['epochs']} epochs"
               if guarded(r, changed) else ""),
            "params (M)": (r.get("parameters") or 0) / 1e6, "CPU ms/cell": r.get("cpu_ms_per_cell"),
            "train min": (r.get("train_seconds") or 0) / 60, "measured on": r["split"]}


table = pd.DataFrame([row(r) for r in rows]).sort_values("macro-F1", ascending=False)
if len(splits) == 1:
    table = table.drop(columns="measured on")
else:  # the column that tells the rows' data apart goes where it is seen without scrolling
    table = table[["model", "group", "measured on"] + [c for c in table.columns if c not in ("model", "group",
                                                                                            "measured on")]]
fmt = {c: st.column_config.NumberColumn(format="%.3f") for c in ["accuracy", "macro-F1", "balanced acc.", "ECE"]}
fmt |= {c: st.column_config.NumberColumn(format="%.1f") for c in ["params (M)", "CPU ms/cell", "train min"]}
GROUP_TEXT = {
    PRETRAINED: "These networks started from ImageNet weights, so they could already see edges and textures when "
                "training began.",
    SCRATCH: "These networks started from random weights and had to learn everything from the training crops."
             + (f" At {fewest} epochs{cut} most had not finished learning." if fewest < SHORT else ""),
}
if deployed:
    GROUP_TEXT[weights_group(deployed.get("weights_source", ""))] += (
        f" The deployed model's row ({deployed['title']}) comes from its bundle's own test evaluation on the "
        f"original crops ({deployed['split']}): it was trained "
        f"with its own recipe ({deployed.get('epochs')} epochs, {deployed['img_size']} px"
        + (", test-time augmentation on, as the app runs it" if deployed.get("tta") else "")
        + "), not with this study's budget.")
for group in (PRETRAINED, SCRATCH):
    part = table[table.group == group].drop(columns="group")
    if part.empty:
        continue
    st.subheader(f"{group} ({len(part)})")
    st.dataframe(part, hide_index=True, width="stretch", column_config=fmt)
    st.caption(f"Figures on {where}. {GROUP_TEXT[group]} One seed per model: differences of a few points "
               f"are within run-to-run noise. {NOT_SHOWN}")

ranked = table.sort_values(["group", "macro-F1"], ascending=[True, False])  # reading order: ImageNet group first
st.markdown("#### Macro-F1 by model")
fig = px.bar(ranked, x="macro-F1", y="model", color="group", orientation="h", text_auto=".2f",
             color_discrete_map=COLOURS, category_orders={"group": [PRETRAINED, SCRATCH]},
             labels={"model": "", "group": "starting weights", "macro-F1": "test macro-F1"})
fig.update_layout(height=120 + 26 * len(ranked), margin=MARGIN, xaxis_range=[0, 1],
                  legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0, title_text="starting weights: "))
fig.update_yaxes(automargin=True, categoryorder="array", categoryarray=list(ranked.model)[::-1])  # top down
st.plotly_chart(fig, width="stretch")
st.caption(f"Macro-F1 (every class counts the same) on {where}, coloured by starting weights. Compare architectures "
           f"within one colour: across colours the starting weights, not the architecture, make most of the "
           f"difference. {NOT_SHOWN}")

st.markdown("#### Compare like with like")
st.caption("Only networks that started from the same weights and were trained with exactly this study's budget: "
           "here the differences come from the architecture (within one run's noise). Pick a starting point, then, "
           "where the study's runs got different numbers of epochs, one training length.")
present = [g for g in (PRETRAINED, SCRATCH) if any(weights_group(r.get("weights_source", "")) == g for r in results)]
if present:
    c1, c2 = st.columns(2)
    like_group = c1.radio("Starting weights", present, horizontal=True, key="cmp_like_group")
    same, left_out = like_with_like(results, budget, like_group)
    lengths = by_epochs(same)
    guard = bool(budget.get("time_budget_s"))
    every = f"every length this budget gave ({epochs_text(same)}, {len(same)} networks)"
    if len(lengths) > 1:  # a time guard ended runs at different epochs: equal training time, not equal length
        length = c2.selectbox("Training length", [None] + list(lengths),
                              key=f"cmp_like_epochs::{like_group}::{'/'.join(map(str, lengths))}",  # per option set
                              format_func=lambda e: every if e is None else
                              f"{e} epochs ({len(lengths[e])} network{'s' if len(lengths[e]) != 1 else ''})",
                              help=("The runs of this study had the same training time, so the epochs each got "
                                    "differ" if guard else "The runs of this budget got different epochs")
                                   + "; a run with more epochs had longer to learn.")
    else:
        length = None
    shown_rows = same if length is None else lengths[length]
    what = like_group + ("" if length is None else f", {length} epochs")
    if len(shown_rows) < 2:
        st.info(f"Only {len(shown_rows)} network{'s' if len(shown_rows) != 1 else ''} of this study ({what}) "
                "trained with its budget: there is nothing to compare here."
                + (f" {md(shown_rows[0]['title'])} is alone; pick another training length."
                   if shown_rows and length is not None else ""))
    elif length is None and len(lengths) > 1:
        st.info(f"These {len(same)} runs got {epochs_text(same)}"
                + (": the same training time, not the same number of epochs, and " if guard else ", and ")
                + "a network that got more epochs had longer to learn. Pick one training length to compare at "
                  "equal epochs.")
    if shown_rows:
        like = pd.DataFrame([{"model": r["title"], "macro-F1": r["metrics"]["macro_f1"],
                              "epochs": r.get("epochs")} for r in shown_rows]).sort_values("macro-F1", ascending=False)
        fig = px.bar(like, x="macro-F1", y="model", orientation="h", custom_data=["epochs"],
                     color_discrete_sequence=[COLOURS[like_group]], labels={"model": "", "macro-F1": "test macro-F1"})
        fig.update_traces(texttemplate="%{x:.2f} (%{customdata[0]} epochs)", textposition="inside",
                          hovertemplate="%{y}: macro-F1 %{x:.3f}, %{customdata[0]} epochs<extra></extra>")
        fig.update_layout(height=95 + 26 * len(like), margin=dict(MARGIN, t=10), xaxis_range=[0, 1])
        fig.update_yaxes(automargin=True, categoryorder="array", categoryarray=list(like.model)[::-1])
        st.plotly_chart(fig, width="stretch")
    st.caption(f"{like_group}, trained with this study's budget ({budget_text(budget)}), on {where}"
               + ("" if length is None else f"; only the runs that got {length} epochs") + ". "
               + (("Left out, a setting of theirs differed: " + "; ".join(f"{t} ({c})" for t, c in left_out) + ". ")
                  if left_out else "")
               + "The deployed model is not here: it had its own recipe.")

st.markdown("#### Per-class F1")
groups = [g for g in (PRETRAINED, SCRATCH) if (ranked.group == g).any()]
sizes = [int((ranked.group == g).sum()) for g in groups]
height = 140 + 26 * len(ranked)
heat = make_subplots(rows=len(groups), cols=1, shared_xaxes=True, subplot_titles=groups, row_heights=sizes,
                     vertical_spacing=50 / height)  # room for the lower group's title
by_title = {r["title"]: r for r in rows}
for i, g in enumerate(groups, 1):
    names = list(ranked[ranked.group == g].model)[::-1]  # plotly draws the first row at the bottom
    per = pd.DataFrame({n: {c: v["f1"] for c, v in by_title[n]["metrics"]["per_class"].items()} for n in names}).T
    heat.add_trace(go.Heatmap(z=per.values, x=list(per.columns), y=names, zmin=0, zmax=1, colorscale="Blues",
                              texttemplate="%{z:.2f}", showscale=i == 1, colorbar=dict(title="F1")), row=i, col=1)
heat.update_layout(height=height, margin=MARGIN)
heat.update_yaxes(automargin=True)
st.plotly_chart(heat, width="stretch")
st.caption(f"F1 of each class on {where}; rows are models, grouped by starting weights. It does not show which "
           f"classes are confused with which (open a model below), nor classes bm-dev does not hold.")

st.markdown("#### One model in detail")
first = [deployed["title"]] if deployed else []
pick = st.selectbox("Model", first + [t for t in ranked.model if t not in first], key="cmp_model",
                    help="Opens on the deployed model, the one this app classifies with.")
r = by_title[pick]
classes = list(r["metrics"]["per_class"])
norm = st.toggle("Normalise rows (recall)", value=True, key="cmp_norm")
c1, c2 = st.columns(2)
cm = np.array(r["metrics"]["confusion_matrix"])
z = cm / cm.sum(1, keepdims=True).clip(min=1) if norm else cm
c1.markdown("##### Confusion matrix")
fig = px.imshow(z, x=classes, y=classes, text_auto=".2f" if norm else True, color_continuous_scale="Blues",
                labels={"x": "predicted class", "y": "true class", "color": "recall" if norm else "crops"})
fig.update_layout(height=460, margin=MARGIN, coloraxis_showscale=False)  # the cells carry their values
c1.plotly_chart(fig, width="stretch")
c1.caption(f"{pick} on the {r['split']}: rows are the true class, columns the predicted one"
           + (", each row divided by its crop count (the diagonal is recall)." if norm else ", counts of crops.")
           + " It does not show how confident the model was, nor crops of classes it was never trained on.")
c2.markdown("##### ROC (one class against the rest)")
fig = go.Figure()
for c, v in r["metrics"]["roc"].items():
    fig.add_trace(go.Scatter(x=v["fpr"], y=v["tpr"], mode="lines", name=f"{c} {v['auc']:.3f}"))
fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), showlegend=False))
fig.update_layout(xaxis_title="false positive rate", yaxis_title="true positive rate", height=460, margin=MARGIN,
                  legend=dict(title_text="class AUC", x=0.98, xanchor="right", y=0.02, yanchor="bottom"))
c2.plotly_chart(fig, width="stretch")
c2.caption(f"{pick} on the {r['split']}, from its calibrated probabilities. An AUC near 1 means the class's crops "
           "get a higher probability than the others. It does not show the threshold the app flags at, nor how rare "
           "each class is (ROC ignores prevalence).")
if r.get("command"):
    cmd, differs = reproduce_command(r["command"])
    st.caption("Reproduce this run with:" + (f" ({differs})" if differs else ""))
    st.code(cmd, language="bash")

timed = ranked[ranked["CPU ms/cell"].notna()]
if not timed.empty:
    st.markdown("#### Size versus speed")
    fig = px.scatter(timed, x="CPU ms/cell", y="macro-F1", size="params (M)", color="group", hover_name="model",
                     log_x=True, color_discrete_map=COLOURS, category_orders={"group": [PRETRAINED, SCRATCH]},
                     labels={"CPU ms/cell": "CPU ms per crop (log scale)", "macro-F1": "test macro-F1",
                             "group": "starting weights"})
    fig.update_traces(marker_sizemin=6)  # the smallest networks stay visible
    fig.update_xaxes(tickvals=[1, 2, 5, 10, 20, 50, 100, 200, 500])  # plain numbers, not log-scale minor digits
    fig.update_layout(height=440, margin=MARGIN, yaxis_range=[0, 1],
                      legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0, title_text="starting weights: "))
    st.plotly_chart(fig, width="stretch")
    st.caption(f"Test macro-F1 on {where} against CPU time per crop as each run recorded it (fp32, PyTorch, on the "
               f"study's machine); bubble area is the parameter count (at least a dot). Hover a bubble for its model. "
               + ("" if len(timed) == len(ranked) else "Rows without a timing (the deployed model) are not drawn. ")
               + "It does not show GPU speed or the ONNX / int8 speed the app reaches (docs/benchmarks.md in the repository).")

st.markdown("#### Published figures")
shown = ["source", "model", "metric", "value", "split_note", "task", "dataset"]
st.dataframe(pub[["seed"] + shown], hide_index=True, width="stretch", column_order=shown,  # file numbers not shown
             column_config={"source": st.column_config.TextColumn("published in")})
st.caption("Copied from the published work this project grew from, as each states it, on its own data, split and "
           "budget (the EfficientNet-B0 + SE figures are on peripheral blood, not bone marrow; the RJPT 2025 paper "
           "reports validation accuracy only; one of the five documents gives no figure). They cannot be compared "
           "with each other or with the tables above.")
