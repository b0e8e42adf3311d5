"""The training loop's parts: batch augmentation on the device, the time-budgeted schedule, distillation."""

import math

import pytest
import torch

from train.data import BatchAugment
from train.train import distill_loss, fit_schedule, label_loss


def _views(x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(-2, -1))
        out += [r, torch.flip(r, dims=(-1,))]
    return out


def test_light_augmentation_is_exactly_a_turn_or_flip_of_each_crop():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=g)
    y = BatchAugment("light", torch.Generator().manual_seed(1))(x)
    ref = x.float() / 255
    seen = set()
    for i in range(len(x)):
        errs = [float((y[i] - v).abs().max()) for v in _views(ref[i])]
        assert min(errs) < 1e-5, f"crop {i} is not a dihedral view of its input"
        seen.add(errs.index(min(errs)))
    assert len(seen) >= 4  # the turns and flips are drawn per crop, not once per batch


def test_strong_augmentation_is_seeded_in_range_and_changes_the_crops():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = BatchAugment("strong", torch.Generator().manual_seed(3))(x)
    b = BatchAugment("strong", torch.Generator().manual_seed(3))(x)
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert all(min(float((a[i] - v).abs().max()) for v in _views(x[i].float() / 255)) > 0.01 for i in range(8))
    assert torch.equal(BatchAugment("none")(x), x.float() / 255)
    with pytest.raises(ValueError):
        BatchAugment("heavy")


def test_time_budget_ignores_the_slow_first_epoch_and_never_cuts_below_epochs_run():
    st = {"history": [{"seconds": 30.0}], "epochs": 200}
    fit_schedule(st, 200, 100)
    assert st["epochs"] == 200  # one epoch says nothing about the rate yet
    st["history"] += [{"seconds": 2.0}, {"seconds": 2.0}]
    fit_schedule(st, 200, 100)
    assert st["epochs"] == 3 + (100 - 34) // 2
    fit_schedule(st, 20, 100)
    assert st["epochs"] == 20  # never more than asked
    st["history"] += [{"seconds": 200.0}]
    fit_schedule(st, 200, 100)
    assert st["epochs"] == 4  # over budget: stop after the epochs already run


def test_distillation_and_soft_label_losses():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    t = 2.0
    same = torch.softmax(logits / t, -1)
    assert float(distill_loss(logits, same, t)) == pytest.approx(0.0, abs=1e-6)
    other = torch.softmax(torch.tensor([[0.0, 3.0, 0.0], [3.0, 0.0, 0.0]]) / t, -1)
    assert float(distill_loss(logits, other, t)) > 0.5
    y = torch.tensor([0, 2])
    ce = torch.nn.CrossEntropyLoss()
    assert float(label_loss(logits, torch.nn.functional.one_hot(y, 3).float(), ce)) == pytest.approx(float(ce(logits, y)))
    assert not math.isnan(float(label_loss(logits, y, ce)))


def test_every_training_flag_says_what_it_does():
    """``python -m train.train --help`` explains each flag (and config key), with its default."""
    from train.train import DEFAULTS, HELP, parse_args  # noqa: F401

    import argparse
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        parse_args(["--help"])
    text = "".join(buf.getvalue().split())  # argparse wraps lines (at hyphens too)
    assert set(HELP) == set(DEFAULTS)
    for key, words in HELP.items():
        assert "".join(words.split()) in text, f"--{key.replace('_', '-')} has no help"
    assert "(default:20)" in text and "--config" in text and isinstance(parse_args([]), argparse.Namespace)
