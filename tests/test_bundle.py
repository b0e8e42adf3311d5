import json

import pytest
import torch

from bmcore.bundle import BUNDLE_JSON, WEIGHTS_FILE, BundleError, find_bundles, load_bundle
from bmcore import RUO_STATEMENT
from tests.conftest import DEV_CLASSES, make_bundle


def test_round_trip_gives_identical_outputs(tmp_path):
    b = make_bundle(tmp_path / "b", DEV_CLASSES, temperature=1.7)
    loaded = load_bundle(tmp_path / "b")
    assert loaded.classes == DEV_CLASSES and loaded.temperature == pytest.approx(1.7)
    assert loaded.data_config == b.data_config
    meta = json.loads((tmp_path / "b" / BUNDLE_JSON).read_text())
    assert meta["statement"] == RUO_STATEMENT and len(meta["weights_sha256"]) == 64
    assert set(meta["versions"]) >= {"torch", "timm", "python"}
    x = torch.randn(2, 3, 64, 64)
    m1, m2 = b.build_model(), loaded.build_model()
    with torch.no_grad():
        assert torch.equal(m1(x), m2(x))
    assert loaded.missing_classes() == ["EBO", "MMZ", "MYB", "NGB", "PEB", "PLM"]


def test_tampered_weights_rejected(tmp_path):
    make_bundle(tmp_path / "b", DEV_CLASSES)
    w = tmp_path / "b" / WEIGHTS_FILE
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(tmp_path / "b")


def test_pickle_weights_refused(tmp_path):
    make_bundle(tmp_path / "b", DEV_CLASSES)
    meta = json.loads((tmp_path / "b" / BUNDLE_JSON).read_text())
    meta["weights_file"] = "model.pt"
    (tmp_path / "b" / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="pickled checkpoints are never loaded"):
        load_bundle(tmp_path / "b")


def test_not_a_bundle_and_bad_json(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)
    (tmp_path / BUNDLE_JSON).write_text("{oops")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_unknown_class_code_refused(tmp_path):
    with pytest.raises(BundleError, match="unknown class"):
        make_bundle(tmp_path / "b", ["BLA", "XYZ"])


def test_find_bundles(tmp_path):
    make_bundle(tmp_path / "a", DEV_CLASSES)
    make_bundle(tmp_path / "c", ["BLA", "HAC"], task="hcl7")
    (tmp_path / "not_a_bundle").mkdir()
    assert [p.name for p in find_bundles(tmp_path)] == ["a", "c"]


class _Payload:
    """A pickle that would create a file if anything ever unpickled it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_disguised_as_safetensors_is_refused_and_never_executed(tmp_path):
    import pickle

    from bmcore.bundle import sha256_file

    make_bundle(tmp_path / "b", DEV_CLASSES)
    marker = tmp_path / "pwned"
    w = tmp_path / "b" / WEIGHTS_FILE
    w.write_bytes(pickle.dumps({"state": _Payload(marker)}))
    meta = json.loads((tmp_path / "b" / BUNDLE_JSON).read_text())
    meta["weights_sha256"] = sha256_file(w)  # the hash matches: only the format can give it away
    (tmp_path / "b" / BUNDLE_JSON).write_text(json.dumps(meta))
    b = load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="not a valid safetensors file"):
        b.build_model()
    assert not marker.exists()


def test_bundle_from_a_newer_schema_is_refused(tmp_path):
    make_bundle(tmp_path / "b", DEV_CLASSES)
    meta = json.loads((tmp_path / "b" / BUNDLE_JSON).read_text())
    meta["schema_version"] = 99
    (tmp_path / "b" / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="schema version 99"):
        load_bundle(tmp_path / "b")
