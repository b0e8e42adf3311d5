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
