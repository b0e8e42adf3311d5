"""Shared pieces of the Streamlit pages: cached model and store, the sidebar, the footer.

The heavy objects are created once per process with ``st.cache_resource`` and shared by all
sessions: the ``Predictor`` is thread-safe (see ``bmcore.predictor``), the ``CaseStore`` opens
a connection per operation. Per-session choices live in ``st.session_state``.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from bmcore import RUO_STATEMENT
from bmcore.bundle import BundleError, find_bundles, load_bundle, pick_default
from bmcore.cases import CaseError, CaseStore
from bmcore.predictor import DEFAULT_THRESHOLD, Predictor
from bmcore.tasks import HAIRY_CELL_CODE

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"
MODELS = ASSETS / "models"


def _secret(name: str) -> str | None:
    try:
        return st.secrets.get(name)  # type: ignore[no-any-return]
    except Exception:  # no secrets.toml: not an error
        return None


def models_dirs() -> list[Path]:
    extra = os.environ.get("BM_MODELS_DIR") or _secret("models_dir")
    return [MODELS] + ([Path(extra)] if extra else [])


def available_bundles() -> list[Path]:
    return find_bundles(*models_dirs())


@st.cache_data(show_spinner=False)
def _bundle_metas(stamps: tuple) -> dict[str, dict]:
    metas = {}
    for path, _ in stamps:
        try:
            metas[path] = load_bundle(path).meta  # verifies the weights' sha256: once per file version
        except BundleError:
            continue
    return metas


def installed_bundles() -> dict[Path, dict]:
    """Verified metadata of every installed bundle, cached by weights file and mtime (no re-hash per rerun)."""
    stamps = []
    for p in available_bundles():
        w = p / "weights.safetensors"
        stamps.append((str(p), w.stat().st_mtime_ns if w.exists() else 0))
    return {Path(k): v for k, v in _bundle_metas(tuple(stamps)).items()}


@st.cache_resource(show_spinner="Loading model…")
def get_predictor(bundle_path: str) -> Predictor:
    return Predictor(bundle_path)


@st.cache_resource
def _store(url: str) -> CaseStore:
    return CaseStore(url or None)


def get_store() -> CaseStore:
    """The case database: BM_DATABASE_URL, else secrets' database_url, else data/bmcases.db (SQLite)."""
    return _store(os.environ.get("BM_DATABASE_URL") or _secret("database_url") or "")


def _persist(key: str, default):
    """Widget state that survives page switches: the widget writes to ``_w_<key>``, we keep ``key``."""
    if key not in st.session_state:
        st.session_state[key] = default
    st.session_state[f"_w_{key}"] = st.session_state[key]


def _store_back(key: str):
    st.session_state[key] = st.session_state[f"_w_{key}"]


def sidebar() -> Predictor | None:
    """Model picker, thresholds and the active case; returns the loaded predictor (or None with a message)."""
    paths = available_bundles()
    sb = st.sidebar
    if not paths:
        sb.error("No model bundle found under assets/models (or BM_MODELS_DIR).")
        return None
    labels = {str(p): p.name for p in paths}
    _persist("bundle", str(pick_default(paths)))
    if st.session_state["bundle"] not in labels:
        st.session_state["bundle"] = st.session_state["_w_bundle"] = str(paths[0])
    sb.selectbox("Model", list(labels), format_func=labels.get, key="_w_bundle", on_change=_store_back,
                 args=("bundle",), help="Bundles in assets/models and in BM_MODELS_DIR")
    try:
        pred = get_predictor(st.session_state["bundle"])
    except (BundleError, OSError, RuntimeError) as exc:
        sb.error(f"This model cannot be loaded: {exc}")
        return None
    sb.caption(f"{len(pred.classes)} classes · {pred.bundle.backbone} · {pred.device}")
    _persist("threshold", DEFAULT_THRESHOLD)
    sb.slider("Uncertain below confidence", 0.0, 1.0, step=0.05, key="_w_threshold", on_change=_store_back,
              args=("threshold",), help="Cells whose calibrated confidence is below this go to the uncertain "
                                        "bin. Applies to new classifications.")
    _persist("hairy_threshold", 0.5)
    if HAIRY_CELL_CODE in pred.classes:
        sb.slider("Hairy-cell flag at P(HAC) ≥", 0.05, 0.95, step=0.05, key="_w_hairy_threshold",
                  on_change=_store_back, args=("hairy_threshold",))
    cases = get_store().list_cases()
    if cases:
        ids = [c["id"] for c in cases]
        names = {c["id"]: f"{c['case']} ({c['status']}, {c['cells']} cells)" for c in cases}
        # none until this session classifies or picks one: a new user never lands in someone else's case
        _persist("case_id", st.session_state.get("case_id"))
        if st.session_state["case_id"] not in ids:
            st.session_state["case_id"] = st.session_state["_w_case_id"] = None
        sb.selectbox("Active case", ids, format_func=names.get, key="_w_case_id", on_change=_store_back,
                     args=("case_id",), index=None, placeholder="Choose a case…")
    sb.caption(RUO_STATEMENT)
    return pred


def active_case():
    """The active case from the store, or None (with a hint) if there is none yet."""
    cid = st.session_state.get("case_id")
    if not cid:
        st.info("No active case. Start one on the **Classify** page, or choose one under **Active case** in the "
                "sidebar.")
        return None
    try:
        return get_store().get_case(cid)
    except CaseError:
        st.session_state.pop("case_id", None)
        st.info("That case no longer exists. Start one on the **Classify** page.")
        return None


def ruo_banner() -> None:
    st.warning(RUO_STATEMENT, icon="⚠️")


def image_bytes(case_id: int, cell) -> bytes | None:
    """The original upload if this session still holds it, else the stored thumbnail."""
    return st.session_state.get("originals", {}).get((case_id, cell.position)) or cell.thumbnail


def predictor() -> Predictor:
    """The predictor the sidebar selected; stops the page with a message when there is none."""
    if not st.session_state.get("predictor_ok") or "bundle" not in st.session_state:
        st.error("No usable model is loaded; see the sidebar.")
        st.stop()
    return get_predictor(st.session_state["bundle"])


@st.cache_data(max_entries=512, show_spinner=False)
def heatmap(bundle_path: str, data: bytes, class_code: str, method: str):
    """(cam, rgb-as-the-model-sees-it) for one crop; cached so moving the opacity slider is instant."""
    import numpy as np

    from bmcore.preprocess import decode_image, resize_rgb

    pred = get_predictor(bundle_path)
    cam, _, code = pred.explain(data, class_code, method)
    rgb = np.asarray(resize_rgb(decode_image(data), pred.cfg))
    return cam, rgb, code


def cells_frame(case, *, only_ok: bool = False):
    """The case's cells as a table (one row per cell), labels as the reviewer left them."""
    import pandas as pd

    from bmcore.tasks import cell_name

    rows = []
    for c in case.cells:
        if only_ok and not c.ok:
            continue
        top = sorted((c.probabilities or {}).items(), key=lambda kv: -kv[1])[:3]
        rows.append({"#": c.position + 1, "file": c.name,
                     "status": "unreadable" if not c.ok else ("rejected" if c.rejected else "ok"),
                     "predicted": c.predicted, "name": cell_name(c.predicted) if c.predicted else "",
                     "confidence": c.confidence, "top-3": ", ".join(f"{k} {v:.2f}" for k, v in top),
                     "uncertain": bool(c.uncertain), "hairy flag": bool(c.hairy_flag),
                     "final": c.label or "", "reviewed by": c.reviewed_by or "",
                     "error": c.error or c.reject_reason,
                     "cell_id": c.id, "version": c.version})
    return pd.DataFrame(rows)
