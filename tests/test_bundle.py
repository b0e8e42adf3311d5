import json
import re

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


def test_bundle_json_is_validated_by_its_schema_naming_the_wrong_field(tmp_path):
    """A wrong field is refused on load by name, not met later by whichever page reads it; a write that would make
    bundle.json wrong is refused before the file changes."""
    from bmcore.bundle import update_bundle_meta

    b = make_bundle(tmp_path / "b", DEV_CLASSES)
    jf = tmp_path / "b" / BUNDLE_JSON
    good = jf.read_text()
    for change, field in ((lambda m: m["calibration"].update(temperature=-1), "calibration.temperature"),
                          (lambda m: m["data_config"].update(mean=[0.5, 0.5]), "data_config.mean"),
                          (lambda m: m.update(classes=["BLA", "BLA"]), "classes"),
                          (lambda m: m.update(metrics={"accuracy": 0.9}), "metrics.split")):
        meta = json.loads(good)
        change(meta)
        jf.write_text(json.dumps(meta))
        with pytest.raises(BundleError, match=rf"b: bundle.json field {re.escape(field)}"):
            load_bundle(tmp_path / "b")
    jf.write_text(good)
    with pytest.raises(BundleError, match="field calibration.temperature"):
        update_bundle_meta(b, calibration={"temperature": "warm"})
    assert jf.read_text() == good and load_bundle(tmp_path / "b").temperature == b.temperature


def test_an_older_bundle_is_migrated_and_a_lineage_is_kept(tmp_path):
    """Schema 1 (no lineage; a gate without crop_side was fitted on 250 px crops) loads as schema 2; a lineage naming
    the parent bundle and the data it saw round-trips through bundle.json."""
    from bmcore.bundle import update_bundle_meta
    from bmcore.bundleschema import SCHEMA_VERSION

    b = make_bundle(tmp_path / "b", DEV_CLASSES)
    meta = json.loads((tmp_path / "b" / BUNDLE_JSON).read_text())
    meta["schema_version"] = 1
    meta["ood"] = {"file": "ood.safetensors", "sha256": "0" * 64}
    (tmp_path / "b" / BUNDLE_JSON).write_text(json.dumps(meta))
    old = load_bundle(tmp_path / "b")
    assert old.spec.schema_version == SCHEMA_VERSION == 2 and old.crop_side == 250 and old.lineage is None
    lineage = {"parent_name": "bm14-mobilenetv2-224px", "parent_sha256": "a" * 64, "method": "fine-tune, 3 epochs",
               "learnt_at": "2026-12-04T21:00:00Z",
               "data": [{"kind": "signed-cases", "description": "12 signed cases", "cells": 915,
                         "classes": {"EBO": 312, "LYT": 603}, "sha256": "b" * 64}]}
    update_bundle_meta(b, lineage=lineage)
    again = load_bundle(tmp_path / "b")
    assert again.lineage.parent_sha256 == "a" * 64 and again.lineage.data[0].classes == {"EBO": 312, "LYT": 603}
    with pytest.raises(BundleError, match="field lineage.data.0.kind"):
        update_bundle_meta(again, lineage={**lineage, "data": [{**lineage["data"][0], "kind": "internet"}]})
