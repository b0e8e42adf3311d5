import json

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

import appkit
from bmcore.bundle import Bundle
from bmcore.comparison import load_results, result_from_bundle

st.title("Model comparison")
appkit.ruo_banner()
COMP = appkit.ASSETS / "comparison"
results = load_results(COMP) if COMP.is_dir() else []
summary = json.loads((COMP / "summary.json").read_text()) if (COMP / "summary.json").is_file() else {}
if not results:
    st.info("The comparison study has not been committed yet; showing the bundled models' own test evaluations.")
    for p, meta in appkit.installed_bundles().items():
        r = result_from_bundle(Bundle(p, meta))
        if r:
            results.append(r)
if summary.get("budget"):
    st.write("**Shared budget:** " + ", ".join(f"{k} = {v}" for k, v in summary["budget"].items()))

if results:
    splits = sorted({r["split"] for r in results})
    st.caption("Every model below was measured on: " + "; ".join(splits)
               + ". Image-level split (file names carry no patient id).")
    table = pd.DataFrame([{
        "model": r["title"], "weights": "ImageNet" if r["weights_source"] != "random-init" else "from scratch",
        "img": r["img_size"], "epochs": r.get("epochs"), "accuracy": r["metrics"]["accuracy"],
        "macro-F1": r["metrics"]["macro_f1"], "balanced acc.": r["metrics"]["balanced_accuracy"],
        "ECE": r["metrics"]["ece"], "params (M)": (r.get("parameters") or 0) / 1e6,
        "CPU ms/cell": r.get("cpu_ms_per_cell"), "train min": (r.get("train_seconds") or 0) / 60,
    } for r in results]).sort_values("macro-F1", ascending=False)
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ["accuracy", "macro-F1", "balanced acc.", "ECE"]})
    per = pd.DataFrame({r["title"]: {c: v["f1"] for c, v in r["metrics"]["per_class"].items()} for r in results}).T
    st.markdown("#### Per-class F1")
    st.plotly_chart(px.imshow(per, text_auto=".2f", color_continuous_scale="Blues", zmin=0, zmax=1, aspect="auto"),
                    width="stretch")
    pick = st.selectbox("Model", [r["title"] for r in results], key="cmp_model")
    r = next(x for x in results if x["title"] == pick)
    classes = list(r["metrics"]["per_class"])
    c1, c2 = st.columns(2)
    cm = np.array(r["metrics"]["confusion_matrix"])
    norm = st.toggle("Normalise rows (recall)", value=True, key="cmp_norm")
    z = cm / cm.sum(1, keepdims=True).clip(min=1) if norm else cm
    c1.markdown("#### Confusion matrix")
    c1.plotly_chart(px.imshow(z, x=classes, y=classes, text_auto=".2f" if norm else True,
                              labels={"x": "predicted", "y": "true"}, color_continuous_scale="Blues"), width="stretch")
    c2.markdown("#### ROC (one-vs-rest)")
    fig = go.Figure()
    for c, v in r["metrics"]["roc"].items():
        fig.add_trace(go.Scatter(x=v["fpr"], y=v["tpr"], mode="lines", name=f"{c} AUC {v['auc']:.3f}"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), showlegend=False))
    fig.update_layout(xaxis_title="false positive rate", yaxis_title="true positive rate", height=420)
    c2.plotly_chart(fig, width="stretch")
    if table["CPU ms/cell"].notna().any():
        st.markdown("#### Size versus speed")
        st.plotly_chart(px.scatter(table, x="CPU ms/cell", y="macro-F1", size="params (M)", text="model",
                                   color="weights"), width="stretch")
    if r.get("command"):
        st.caption("Reproduce with:")
        st.code(r["command"], language="bash")

st.markdown("#### Published figures from the seed documents")
pub = pd.read_csv(appkit.ASSETS / "published" / "seeds_published.csv", dtype={"seed": str})
st.dataframe(pub, hide_index=True, width="stretch")
st.caption("Copied from the five seed documents, each on its own data, split and budget (seed 004 is peripheral "
           "blood, not bone marrow; seed 003 reports validation accuracy only). They cannot be compared with each "
           "other or with the table above.")
