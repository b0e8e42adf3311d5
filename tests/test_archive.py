"""Archive classification (``python -m bmcore archive``): real crops in a nested folder tree, a ZIP and a file list;
the rows are the app's own predictions; a bad file is a row with its error; a rerun skips what is written by content
hash; a lost or damaged shard is redone. The Ray tests (marker ``ray``: a 2-CPU local cluster started once for the
module) check that Ray writes the same rows and resumes the same way; they skip where Ray is not installed
(``make ray``), unless BM_REQUIRE_RAY=1 as in CI.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bmcore import archive
from bmcore.predictor import Predictor
from bmcore.cli import default_bundle
from tests.conftest import DEV_CLASSES

DEFAULT_BUNDLE = default_bundle()


@pytest.fixture(scope="module")
def tree(dev_root, tmp_path_factory):
    """18 real crops: 10 in a nested folder tree (two levels, as the TCIA download nests), 4 in a ZIP, 4 through a
    file list; plus a text file named .jpg, a .csv and a missing listed file."""
    root = tmp_path_factory.mktemp("archive")
    files = [sorted((dev_root / c).glob("*.jpg"))[i] for i in range(3) for c in DEV_CLASSES[:6]]
    (root / "tree" / "BLA" / "deep").mkdir(parents=True)
    for i, f in enumerate(files[:10]):
        shutil.copy(f, root / "tree" / ("BLA/deep" if i % 2 else "BLA") / f.name)
    (root / "tree" / "BLA" / "broken.jpg").write_text("not an image")
    (root / "tree" / "notes.csv").write_text("a,b\n")
    with zipfile.ZipFile(root / "crops.zip", "w") as z:
        for f in files[10:14]:
            z.write(f, f"inner/{f.name}")
    (root / "list.txt").write_text("# crops by path\n" + "\n".join(str(f) for f in files[14:18]) + "\nmissing.jpg\n")
    return {"root": root, "inputs": [str(root / "tree"), str(root / "crops.zip"), str(root / "list.txt")],
            "files": files}


def _run(tree, out, **kw):
    return archive.run(tree["inputs"], out, str(DEFAULT_BUNDLE), progress=False, log=lambda *_: None, chunk=5, **kw)


def test_rows_are_the_apps_predictions_and_bad_files_are_rows(tree, tmp_path):
    res = _run(tree, tmp_path / "out")
    df = archive.read_results(tmp_path / "out")
    assert res["inputs"] == 21 and len(df) == 21
    assert len(list((tmp_path / "out").glob("*.parquet"))) == 5  # 21 listed crops in chunks of 5
    bad = df[df.status == "unreadable"].set_index("source")
    assert set(bad.index) == {"tree/BLA/broken.jpg", "tree/notes.csv", "missing.jpg"}
    assert "not an image file type (.csv)" in bad.loc["tree/notes.csv", "error"]
    assert bad.loc["missing.jpg", "sha256"] == ""  # could not be read: tried again by a rerun
    assert {"crops.zip!inner/" + f.name for f in tree["files"][10:14]} <= set(df.source)
    assert "tree/BLA/deep/" + tree["files"][1].name in set(df.source)
    pred = Predictor(DEFAULT_BUNDLE)
    ok = df[df.status != "unreadable"]
    assert len(ok) == 18 and ok.bundle_sha256.eq(pred.bundle.sha256).all() and ok.setting.eq(pred.setting).all()
    by_hash = ok.set_index("sha256")
    mine = pred.predict([f.read_bytes() for f in tree["files"]])
    import hashlib

    for f, p in zip(tree["files"], mine):
        row = by_hash.loc[hashlib.sha256(f.read_bytes()).hexdigest()]
        assert row.predicted == p.code and row.needs_review == p.needs_review
        assert np.allclose([row[f"p_{c}"] for c in pred.classes], [p.probabilities[c] for c in pred.classes], atol=1e-4)


def test_a_rerun_skips_what_is_written_and_redoes_what_was_lost(tree, tmp_path):
    out = tmp_path / "out"
    _run(tree, out)
    first = archive.read_results(out)
    again = _run(tree, out)
    assert again["written_before"] == 21 and again["written_now"] == 1  # only the missing file is tried again
    assert len(archive.read_results(out)) == 21
    import pyarrow.parquet as pq

    shards = sorted(out.glob("*.parquet"))
    redo = sum(sum(1 for h in pq.read_table(f).column("sha256").to_pylist() if h) for f in shards[:2])
    shards[0].unlink()  # a kill before this chunk was written
    shards[1].write_bytes(shards[1].read_bytes()[:100])  # a shard damaged on disk
    (out / "part-x.parquet.tmp").write_bytes(b"half")  # a write a kill interrupted
    res = _run(tree, out)
    assert res["set_aside_shards"] and shards[1].with_suffix(".corrupt").exists()
    assert not list(out.glob("*.tmp"))
    assert res["written_now"] == redo + 1  # the two shards' readable crops, and the missing file once more
    after = archive.read_results(out)
    assert len(after) == 21 and set(after.source) == set(first.source)
    key = ["source", "predicted", "status"]
    assert after[key].sort_values("source").values.tolist() == first[key].sort_values("source").values.tolist()


def test_the_command_line_writes_a_csv(tree, tmp_path):
    from bmcore.cli import main

    assert main(["archive", *tree["inputs"], "--out", str(tmp_path / "out"), "--csv", str(tmp_path / "all.csv"),
                 "--chunk", "8"]) == 0
    import csv

    rows = list(csv.DictReader((tmp_path / "all.csv").open()))
    assert len(rows) == 21 and rows[0]["bundle_sha256"]
    assert all(r["confidence"] == "" for r in rows if r["status"] == "unreadable")  # blanks, not "nan"


def test_a_cpu_worker_classifies_without_importing_torch(tree):
    """A Ray worker of ``archive`` (``Classifier`` with device "cpu", the ONNX engine) never imports torch: its
    start-up is about 2 s shorter per worker. Its rows are the app's (same probabilities as a default Predictor)."""
    import json
    import subprocess
    import sys

    files = [str(f) for f in tree["files"][:6]]
    code = ("import json, sys\n"
            "from bmcore.archive import Classifier\n"
            f"c = Classifier({str(DEFAULT_BUNDLE)!r}, threads=1, device='cpu')\n"
            f"out = c({{'source': {files!r}, 'path': {files!r}, 'member': [''] * 6, 'error': [''] * 6}})\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'engine': c.pred.engine, 'p': out['confidence'],"
            " 'code': out['predicted']}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[1]))
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["engine"] == "onnx" and got["torch"] is False
    mine = Predictor(DEFAULT_BUNDLE).predict(files)
    assert got["code"] == [p.code for p in mine]
    assert np.allclose(got["p"], [p.confidence for p in mine], atol=1e-4)  # rows keep 4 decimals


# -- Ray -------------------------------------------------------------------------------------------------------------
def test_actors_get_a_runtime_environment_unless_every_node_was_set_up_for_the_archive(monkeypatch):
    """A cluster whose live nodes all carry ``bmcore_env`` (deploy/ray-node.sh) starts the actors as they are; any
    other cluster gives them this checkout on PYTHONPATH and nice 0 through a runtime environment."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (make ray installs requirements-ray.txt)")
    ours = {"Alive": True, "Resources": {"CPU": 2.0, archive.ENV_RESOURCE: 1.0}}
    theirs = {"Alive": True, "Resources": {"CPU": 2.0}}
    gone = {"Alive": False, "Resources": {"CPU": 2.0}}
    monkeypatch.setattr(ray, "nodes", lambda: [ours, ours, gone])
    assert archive.actor_options() == {}
    monkeypatch.setattr(ray, "nodes", lambda: [ours, theirs])
    env = archive.actor_options()["runtime_env"]["env_vars"]
    assert env["RAY_worker_niceness"] == "0"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(archive.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
    except ImportError:
        if os.environ.get("BM_REQUIRE_RAY") == "1":
            pytest.fail("Ray is not installed (make ray)")
        pytest.skip("Ray is not installed (make ray installs requirements-ray.txt)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(archive.Path(archive.__file__).resolve().parents[1])}})
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_writes_the_same_rows_and_resumes(tree, tmp_path, ray_cluster):
    plain = _run(tree, tmp_path / "plain") and archive.read_results(tmp_path / "plain")
    half = dict(tree, inputs=tree["inputs"][:1])  # the folder tree only: a run stopped part way
    _run(half, tmp_path / "ray", ray_address="auto", concurrency=2)
    res = _run(tree, tmp_path / "ray", ray_address="auto", concurrency=2)
    assert res["written_before"] == 12 and res["written_now"] == 9
    got = archive.read_results(tmp_path / "ray")
    assert len(got) == 21
    cols = ["source", "sha256", "status", "predicted", "needs_review", "rejected_reason"]
    assert got[cols].values.tolist() == plain[cols].values.tolist()
    probs = [f"p_{c}" for c in DEV_CLASSES]
    assert np.allclose(got[probs].to_numpy(float), plain[probs].to_numpy(float), atol=1e-5, equal_nan=True)


@pytest.mark.ray
def test_ray_a_batch_of_only_unreadable_files_is_rows_not_a_crash(tmp_path, ray_cluster):
    """Found 2026-12-07: when every crop of a batch was unreadable, Ray handed the driver its flag columns as NaNs and
    writing the shard crashed the run (``archive missing.jpg --ray``). Each is a row with its error."""
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4")
    inputs = [str(tmp_path / "missing.jpg"), str(tmp_path / "broken.jpg"), str(tmp_path / "notes.pdf")]
    res = archive.run(inputs, tmp_path / "out", str(DEFAULT_BUNDLE), progress=False, log=lambda *_: None,
                      ray_address="auto", concurrency=1)
    df = archive.read_results(tmp_path / "out")
    assert res["written_now"] == 3 and sorted(df.source) == ["broken.jpg", "missing.jpg", "notes.pdf"]
    assert (df.status == "unreadable").all() and df.error.str.len().gt(0).all()
    assert df.needs_review.isna().all()  # no verdict, so no flag: neither True nor False
