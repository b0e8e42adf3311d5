import json

import pandas as pd
import streamlit as st

import appkit
from bmcore.tasks import cell_name

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

**Not for:** diagnosis without expert review; whole-slide images or fields with several cells; peripheral blood
smears, other stains or magnifications; classes the model was not trained on (below).
""")
c1, c2, c3, c4 = st.columns(4)
c1.metric("Backbone", m.get("timm_name", b.backbone))
c2.metric("Parameters", f"{m.get('parameters', 0) / 1e6:.2f} M")
c3.metric("Input", f"{b.data_config.input_size} px")
c4.metric("Test-time augmentation", "on (4 views)" if b.tta else "off")
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
    k3.metric("Balanced accuracy", f"{met['balanced_accuracy']:.3f}")
    k4.metric("Calibration error (ECE)", f"{met['ece']:.3f}", help=f"before temperature scaling: "
                                                                     f"{met.get('ece_before_temperature', float('nan')):.3f}")
    st.dataframe(pd.DataFrame([{"class": c, "name": cell_name(c), "F1": v} for c, v in met["per_class_f1"].items()]),
                 hide_index=True)
else:
    st.info("This bundle carries no test metrics.")
st.markdown("#### Calibration")
cal = m.get("calibration", {})
st.write(f"Temperature {cal.get('temperature', 1.0):.3f}, fitted on the {cal.get('fitted_on', 'n/a')}. Confidences "
         "shown in the app are temperature-scaled probabilities.")
st.markdown("#### Images it will not judge")
ood = m.get("ood")
if ood:
    ev_path = b.path / "eval_ood.json"
    ev = json.loads(ev_path.read_text()) if ev_path.is_file() else {}
    st.write(f"A gate in front of the classifier refuses blank, out-of-focus and unfamiliar images (not a recognisable "
             f"bone marrow single-cell crop) instead of giving them a class. Fitted on the {ood['fitted_on']}; "
             f"threshold set on the {ood['calibrated_on']} to refuse {ood['val_rejection']:.1%} of it. On the test "
             f"split (never used by the gate) it refuses **{ood['test_rejection']:.1%}** of real crops.")
    g1, g2, g3 = st.columns(3)
    g1.metric("Real test crops refused", f"{ood['test_rejection']:.1%}")
    g2.metric("Out-of-distribution images refused", f"{ev.get('ood_refused', float('nan')):.0%}",
              help=f"{ood['ood_images']} generated or packaged images (fields, other magnification, blur, blank, "
                   "photos, another stain, screenshots, noise)")
    g3.metric("AUROC, unfamiliar vs real", f"{ood['auroc']['gate']:.3f}",
              help="max-softmax baseline: " + f"{ood['auroc'].get('max_softmax_baseline', float('nan')):.3f}")
    if ev.get("by_kind"):
        st.dataframe(pd.DataFrame([{"kind": k, "images": v["n"], "refused": f"{v['refused']:.0%}",
                                    "AUROC vs test": round(v["auroc_vs_test"], 3)} for k, v in ev["by_kind"].items()]),
                     hide_index=True)
    st.caption("A passed gate means the image looks like the training crops, not that it is suitable: the gate has "
               "never seen real peripheral-blood crops, other stains or other scanners.")
else:
    st.info("This bundle has no out-of-distribution gate: every readable image gets a class.")
st.markdown("#### Training")
if tr:
    st.write(f"Weights started from: `{tr.get('weights_source')}`. {tr.get('epochs_run')} epochs "
             f"(best on validation: epoch {tr.get('best_epoch')}), {tr.get('train_seconds', 0) / 60:.0f} min on "
             f"{tr.get('hardware')}. Data: `{tr.get('data', {}).get('root')}`, split file "
             f"`{tr.get('data', {}).get('splits')}`.")
    st.code(tr.get("command", ""), language="bash")
    st.json(tr.get("config", {}), expanded=False)
st.markdown("#### Provenance")
st.write(f"Weights sha256 `{b.sha256}` (verified when loaded) · versions {m.get('versions', {})}")
st.caption("Data: Matek C. et al., An Expert-Annotated Dataset of Bone Marrow Cytology in Hematologic Malignancies, "
           "TCIA 2021 (doi 10.7937/TCIA.AXH3-T579); Blood 2021;138(20):1917.")
