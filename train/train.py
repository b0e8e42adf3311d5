"""Fine-tune a registered backbone on a task and write a bundle the app loads.

    python -m train.train --config train/configs/default.yaml [--epochs 20 --backbone efficientnet_lite0 ...]
    torchrun --nproc-per-node 2 -m train.train --config ...      # DistributedDataParallel (gloo/NCCL)

The YAML gives defaults, flags override them, and the resolved config is written next to the
outputs. Model selection (early stopping, the TTA choice) uses the validation split only;
the test split is read once, at the end, by ``train.evaluate``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from bmcore.backbones import get_backbone
from bmcore.bundle import save_bundle
from bmcore.preprocess import DataConfig, normalize
from bmcore.weights import build_pretrained

from .data import BatchAugment, CropDataset, load_splits, task_classes_present
from .evaluate import evaluate

# every key is a flag (--data-root ...) and a config key; what each does: HELP
DEFAULTS: dict = {
    "data_root": "../shared/data/bm-dev",
    "splits": "train/splits/bm-dev_seed42.csv",
    "task": "bm14",
    "backbone": "mobilenetv2",
    "weights": "auto",
    "img_size": None,
    "denoise_sharpen": False,
    "epochs": 20,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 1.0,
    "label_smoothing": 0.1,
    "balance": "sampler",
    "augment": "strong",
    "amp": "auto",
    "channels_last": True,
    "patience": 6,
    "seed": 42,
    "workers": 0,
    "threads": 0,
    "out": "runs/default",
    "bundle_name": None,
    "resume": True,
    "tta": "auto",
    "max_steps": 0,
    "limit_per_class": 0,
    "evaluate_test": True,
    "gate": False,
    "preload": True,
    "mixup": 0.0,
    "cutmix": 0.0,
    "ema_decay": 0.0,
    "teachers": "",
    "kd_alpha": 0.5,
    "kd_temperature": 2.0,
    "kd_teacher_tta": False,
    "init_from": "",
    "imprint": True,
    "head_lr_mult": 1.0,
    "time_budget_s": 0,
    "select": "best",
}
# what each flag (and config key) does: shown by --help
HELP: dict[str, str] = {
    "data_root": 'dataset root: one folder per class code',
    "splits": 'split CSV (path, label, sha256, split) written by python -m train.data index',
    "task": 'task whose classes are trained (bm14, hcl7, bm21; bmcore.tasks)',
    "backbone": 'registered backbone (bmcore.backbones)',
    "weights": "pretrained weights: auto (the backbone's ImageNet weights from a pip package), none, or a file",
    "img_size": "input side in px (default: the backbone's own)",
    "denoise_sharpen": "apply the seed paper's denoise + sharpen before normalising",
    "epochs": 'epochs planned (early stopping and --time-budget-s may end sooner)',
    "batch_size": 'crops per optimiser step (per process under torchrun)',
    "lr": 'peak learning rate of AdamW (cosine schedule after the warm-up)',
    "weight_decay": 'AdamW weight decay',
    "warmup_epochs": 'epochs of linear learning-rate warm-up',
    "label_smoothing": 'label smoothing of the cross-entropy',
    "balance": 'class balance: sampler (class-balanced draw), loss (weighted loss) or none',
    "augment": 'augmentation on the device: strong, light or none (train.data.BatchAugment)',
    "amp": 'mixed precision: auto, bf16, fp16 or none',
    "channels_last": 'channels-last memory format (faster convolutions on most devices)',
    "patience": 'early stop after this many epochs without a val macro-F1 gain',
    "seed": 'seed of the sampler, augmentation and initialisation',
    "workers": 'DataLoader / preload decoding workers',
    "threads": "torch CPU threads (0: torch's default)",
    "out": 'run folder: config.yaml, last.pt (resume), best.pt and bundle/',
    "bundle_name": 'name of the bundle written (default: TASK-BACKBONE-SIZEpx)',
    "resume": 'resume from OUT/last.pt when it exists',
    "tta": 'test-time augmentation of the shipped bundle: auto (chosen on val), on or off',
    "max_steps": 'stop after this many optimiser steps (smoke tests; 0: no limit)',
    "limit_per_class": 'at most this many crops per class and split (smoke tests; 0: all)',
    "evaluate_test": 'evaluate the bundle once on the test split at the end (train.evaluate)',
    "gate": 'fit and calibrate the quality / out-of-distribution gate into the bundle (train.ood)',
    "preload": 'decode each split once into one uint8 tensor on the training device (else a DataLoader)',
    "mixup": 'mixup alpha (timm.data.Mixup; 0: off)',
    "cutmix": 'cutmix alpha (0: off; with both on, each batch takes one of the two)',
    "ema_decay": 'keep an exponential moving average of the weights (timm ModelEmaV3) and select and ship it (0: off)',
    "teachers": 'comma-separated bundle folders: distil from their averaged soft labels',
    "kd_alpha": 'weight of the distillation term (the rest: the labels)',
    "kd_temperature": 'temperature of the distillation',
    "kd_teacher_tta": "average the teachers' soft labels over the 4 dihedral views the app's TTA uses",
    "init_from": 'a bundle folder of the same backbone and classes: start from its weights (fine-tuning)',
    "imprint": "with --init-from: a class the initial bundle lacks starts from its training crops' mean feature "
               "(weight imprinting, Qi et al. 2018) instead of a random classifier row",
    "head_lr_mult": "the classifier's learning rate as a multiple of --lr (a new class's row has the most to learn)",
    "select": "the weights the bundle ships: best (the epoch of the highest val macro-F1) or last (the last epoch's: "
              "with --ema-decay, the average the schedule ends on; a val set of a few dozen cells picks by noise)",
    "time_budget_s": 'after each epoch, shorten the schedule (cosine included) so that training ends within this many seconds (0: none)',
}


def str2bool(v: str) -> bool:
    return str(v).lower() in ("1", "true", "yes", "on")


def parse_args(argv=None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None, help="YAML of defaults (train/configs/); flags override it")
    known, _ = pre.parse_known_args(argv)
    cfg = dict(DEFAULTS)
    if known.config:
        loaded = yaml.safe_load(Path(known.config).read_text()) or {}
        unknown = set(loaded) - set(DEFAULTS)
        if unknown:
            raise SystemExit(f"{known.config}: unknown keys {sorted(unknown)}")
        cfg.update(loaded)
    ap = argparse.ArgumentParser(prog="python -m train.train", parents=[pre], description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for k, v in DEFAULTS.items():
        flag = "--" + k.replace("_", "-")
        h = HELP[k] if cfg[k] is None else f"{HELP[k]} (default: {cfg[k]})"
        if isinstance(v, bool):
            ap.add_argument(flag, type=str2bool, metavar="BOOL", help=h)
        elif v is None:
            ap.add_argument(flag, type=lambda s: None if s in ("", "none", "None") else (int(s) if s.isdigit() else s),
                            help=h)
        else:
            ap.add_argument(flag, type=type(v), help=h)
    ap.set_defaults(**cfg)
    args = ap.parse_args(argv)
    if args.select not in ("best", "last"):
        ap.error(f"--select: best or last, not {args.select!r}")
    return args


class EpochSampler(Sampler[int]):
    """Seeded per-epoch draw (uniform permutation or class-balanced with replacement), sharded by rank."""

    def __init__(self, n: int, weights: np.ndarray | None, seed: int, rank: int = 0, world: int = 1):
        self.n, self.weights, self.seed, self.rank, self.world = n, weights, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is None:
            idx = torch.randperm(self.n, generator=g)
        else:
            idx = torch.multinomial(torch.as_tensor(self.weights, dtype=torch.double), self.n, True, generator=g)
        per = self.n // self.world
        return iter(idx[self.rank * per:(self.rank + 1) * per].tolist())

    def __len__(self) -> int:
        return self.n // self.world


def setup_distributed() -> tuple[int, int, torch.device]:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        from bmcore.forward import cpu_bf16_supported

        return torch.bfloat16 if cpu_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def limit(df, n: int, seed: int):
    if n <= 0:
        return df
    shuffled = df.sample(frac=1.0, random_state=seed)
    return shuffled[shuffled.groupby("label").cumcount() < n].sort_index()


def fit_schedule(state: dict, epochs: int, budget_s: float) -> None:
    """Set ``state["epochs"]`` to the most epochs (at most ``epochs``) that end within ``budget_s`` seconds.

    The first epoch pays for start-up (CUDA context, cuDNN autotuning, a busy GPU's other runs),
    so the rate is the last epoch's; the schedule may shrink or grow back as the rate changes,
    never below the epochs already run.
    """
    h = state["history"]
    if len(h) < 2:
        return
    spent = sum(e["seconds"] for e in h)
    state["epochs"] = int(min(epochs, max(len(h), len(h) + (budget_s - spent) // max(h[-1]["seconds"], 1e-3))))


def make_batches(ds: CropDataset, sampler: EpochSampler, args, device: torch.device, world: int):
    """(uint8 batch, targets) per step: from one preloaded tensor on ``device``, or a DataLoader."""
    drop_last = len(ds) // world > args.batch_size
    if not args.preload:
        return DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                          drop_last=drop_last, persistent_workers=args.workers > 0)
    return PreloadedBatches(ds.preload(args.workers).to(device), torch.tensor(ds.targets, device=device), sampler,
                            args.batch_size, drop_last)


class PreloadedBatches:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, sampler: EpochSampler, batch_size: int, drop_last: bool):
        self.x, self.y, self.sampler, self.bs, self.drop_last = x, y, sampler, batch_size, drop_last

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.bs if self.drop_last else math.ceil(n / self.bs)

    def __iter__(self):
        idx = torch.tensor(list(self.sampler), device=self.x.device)
        for i in range(len(self)):
            j = idx[i * self.bs:(i + 1) * self.bs]
            yield self.x[j], self.y[j]


def make_mixup(args, num_classes: int):
    """timm's Mixup/CutMix (soft targets carrying the label smoothing), or None when both are off."""
    if args.mixup <= 0 and args.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.label_smoothing,
                 num_classes=num_classes)


def label_loss(logits: torch.Tensor, target: torch.Tensor, criterion) -> torch.Tensor:
    if target.dtype.is_floating_point:  # soft targets from mixup/cutmix
        return torch.sum(-target * torch.log_softmax(logits.float(), -1), -1).mean()
    return criterion(logits, target)


def load_teachers(spec: str, classes: list[str], device: torch.device) -> list:
    """Teacher bundles for distillation: each with the same classes, in eval mode on ``device``."""
    from bmcore.bundle import load_bundle

    out = []
    for p in [p for p in spec.split(",") if p.strip()]:
        b = load_bundle(p.strip())
        if list(b.classes) != list(classes):
            raise SystemExit(f"teacher {p}: classes {b.classes} differ from the student's {classes}")
        m = b.build_model().to(device).to(memory_format=torch.channels_last).eval()
        for q in m.parameters():
            q.requires_grad_(False)
        out.append((b, m))
    return out


@torch.no_grad()
def teacher_probs(teachers: list, x01: torch.Tensor, temperature: float, dtype, channels_last: bool,
                  tta: bool = False) -> torch.Tensor:
    """The teachers' averaged softened probabilities for a batch in [0, 1] (each at its own size and normalisation).

    With ``tta`` each teacher sees the 4 dihedral views of ``bmcore.predictor`` and its probabilities are averaged
    over them: a student distilled this way learns, in one view, what the app's TTA ensemble says.
    """
    import torch.nn.functional as F

    from bmcore.forward import dihedral_views

    probs = 0.0
    for b, m in teachers:
        s = b.data_config.input_size
        x = x01 if x01.shape[-1] == s else F.interpolate(x01, size=(s, s), mode="bilinear", antialias=True)
        x = normalize(x, b.data_config)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        views = dihedral_views(x) if tta else [x]
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            p = sum(torch.softmax(m(v).float() / temperature, -1) for v in views) / len(views)
        probs = probs + p
    return probs / len(teachers)


def distill_loss(logits: torch.Tensor, soft: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s KL(teacher || student) at temperature T, scaled by T^2."""
    logp = torch.log_softmax(logits.float() / temperature, -1)
    return torch.nn.functional.kl_div(logp, soft, reduction="batchmean") * temperature ** 2


def predict_logits(model, ds, device, dtype, channels_last: bool, tta: bool = False) -> np.ndarray:
    """Validation logits through bmcore's one inference forward pass (the app's)."""
    from bmcore.forward import forward_logits
    from bmcore.preprocess import normalize, stack_crops

    model.eval()
    out = []
    for i in range(0, len(ds), 256):  # bounded memory whatever the split's size
        x = normalize(stack_crops([ds.uint8(j) for j in range(i, min(i + 256, len(ds)))]), ds.cfg)
        out.append(forward_logits(model, x, device, dtype=dtype, channels_last=channels_last, tta=tta,
                                  batch_size=64 if device.type == "cuda" else 8))
    return np.concatenate(out)


@dataclass
class Data:
    """The training and validation data of a run, and what is drawn from them."""
    cfg: DataConfig
    classes: list[str]
    train: CropDataset
    val: CropDataset
    counts: np.ndarray          # training crops per class
    sampler: "EpochSampler"
    batches: object             # (uint8 batch, targets) per step


def prepare_data(args, rank: int, world: int, device: torch.device) -> Data:
    """The task's classes present in the split file, the train and val crops (``--limit-per-class``), the sampler
    (class-balanced with ``--balance sampler``) and the batches."""
    spec = get_backbone(args.backbone)
    size = int(args.img_size or spec.input_size)
    dcfg = DataConfig(size, spec.mean, spec.std, bool(args.denoise_sharpen))
    df = load_splits(args.splits)
    classes = task_classes_present(df, args.task)
    df = df[df.label.isin(classes)]
    train_ds = CropDataset(args.data_root, limit(df[df.split == "train"], args.limit_per_class, args.seed), classes, dcfg)
    val_ds = CropDataset(args.data_root, limit(df[df.split == "val"], args.limit_per_class, args.seed), classes, dcfg)
    counts = np.bincount(train_ds.targets, minlength=len(classes)).astype(np.float64)
    sample_w = (1.0 / counts)[train_ds.targets] if args.balance == "sampler" else None
    sampler = EpochSampler(len(train_ds), sample_w, args.seed, rank, world)
    return Data(dcfg, classes, train_ds, val_ds, counts, sampler, make_batches(train_ds, sampler, args, device, world))


def build_model(args, classes: list[str], size: int, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The backbone with its pretrained weights (or ``--init-from`` a bundle of the same backbone and classes) on
    ``device``; returns (model, where its weights came from)."""
    model, weight_source = build_pretrained(args.backbone, len(classes), args.weights, img_size=size)
    if args.init_from:
        from bmcore.bundle import load_bundle

        init = load_bundle(args.init_from)
        if init.backbone != args.backbone or not set(init.classes) <= set(classes):
            raise SystemExit(f"--init-from {args.init_from}: {init.backbone} {init.classes} is not {args.backbone} "
                             f"with classes among {classes}")
        model.load_state_dict(start_from(init.build_model().state_dict(), model.state_dict(), init.classes, classes))
        weight_source = f"bundle:{init.name} sha256:{init.sha256[:16]} (itself from {(init.meta.get('training') or {}).get('weights_source', 'not recorded')})"
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, weight_source


def start_from(init: dict, fresh: dict, init_classes: list[str], classes: list[str]) -> dict:
    """The state of a model of ``classes`` starting from ``init`` (a model of ``init_classes``, a subset in any
    order): every tensor as learnt, and the classifier's rows (the tensors whose first axis is the class axis) moved
    to each class's new place; a class the initial model lacks keeps its fresh initialisation."""
    if list(init_classes) == list(classes):
        return init
    if len(init_classes) == len(classes):
        raise SystemExit("--init-from: the same classes in another order; keep the task's order")
    out = dict(init)
    where = [classes.index(c) for c in init_classes]
    for k, v in init.items():
        f = fresh[k]
        if v.shape == f.shape:
            continue
        if v.shape[0] != len(init_classes) or f.shape[0] != len(classes) or v.shape[1:] != f.shape[1:]:
            raise SystemExit(f"--init-from: {k} has shape {tuple(v.shape)}, the model needs {tuple(f.shape)}")
        row = f.clone()
        row[where] = v
        out[k] = row
    return out


@torch.no_grad()
def imprint_new_classes(model, data: "Data", init_from: str, device: torch.device, channels_last: bool) -> list[str]:
    """Weight imprinting (Qi, Brown & Lowe, CVPR 2018) for the classes ``init_from`` lacks: each new class's
    classifier row becomes the mean of its training crops' L2-normalised features, scaled to the mean norm of the
    learnt rows, with the learnt rows' mean bias, so that a class added from a few dozen signed cells starts where
    its cells lie rather than at random. Returns the classes imprinted."""
    from bmcore.bundle import load_bundle
    from bmcore.preprocess import stack_crops

    known = set(load_bundle(init_from).classes)
    new = [i for i, c in enumerate(data.classes) if c not in known]
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not new or not isinstance(head, torch.nn.Linear):
        return []
    targets = np.asarray(data.train.targets)
    was = model.training
    model.eval()
    feats = {i: [] for i in new}
    for i in new:
        idx = np.flatnonzero(targets == i)
        for j in range(0, len(idx), 64):
            x = normalize(stack_crops([data.train.uint8(int(k)) for k in idx[j:j + 64]]).to(device), data.cfg)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            f = model.forward_head(model.forward_features(x), pre_logits=True).float()
            feats[i].append(torch.nn.functional.normalize(f, dim=1))
    old = [i for i in range(len(data.classes)) if i not in new]
    scale = head.weight[old].norm(dim=1).mean()
    for i in new:
        if feats[i]:
            head.weight[i] = torch.nn.functional.normalize(torch.cat(feats[i]).mean(0), dim=0) * scale
            if head.bias is not None:
                head.bias[i] = head.bias[old].mean()
    model.train(was)
    return [data.classes[i] for i in new if feats[i]]


@dataclass
class Run:
    """What one training run carries from epoch to epoch."""
    args: argparse.Namespace
    data: Data
    model: torch.nn.Module
    ddp: torch.nn.Module
    ema: object
    opt: torch.optim.Optimizer
    sched: object
    plan: dict
    scaler: object
    criterion: object
    dtype: torch.dtype | None
    device: torch.device
    augment: BatchAugment
    mix: object
    teachers: list
    state: dict = field(default_factory=dict)

    @property
    def selected(self) -> torch.nn.Module:
        """What is validated, kept and shipped: the EMA weights when kept, else the model's."""
        return self.ema.module if self.ema is not None else self.model


def make_run(args, data: Data, model, weight_source: str, rank: int, world: int, device: torch.device) -> Run:
    """Optimiser (AdamW), warm-up + cosine schedule, loss (balanced with ``--balance loss``), mixed precision, EMA,
    mixup and teachers of a run."""
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    ema = None
    if args.ema_decay > 0:
        import timm.utils

        ema = getattr(timm.utils, "ModelEmaV3", timm.utils.ModelEmaV2)(model, decay=args.ema_decay)
    dtype = amp_dtype(args.amp, device)
    counts = data.counts
    class_w = torch.tensor(counts.sum() / (len(data.classes) * counts), dtype=torch.float32) \
        if args.balance == "loss" else None
    criterion = torch.nn.CrossEntropyLoss(weight=class_w.to(device) if class_w is not None else None,
                                          label_smoothing=args.label_smoothing)
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, torch.nn.Module) else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": args.lr}]
    if head_ids:
        groups.append({"params": [p for p in model.parameters() if id(p) in head_ids], "lr": args.lr * args.head_lr_mult})
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = max(1, len(data.batches))
    plan = {"total": args.epochs * steps_per_epoch, "warm": int(args.warmup_epochs * steps_per_epoch),
            "steps_per_epoch": steps_per_epoch, "weight_source": weight_source}

    def lr_at(step: int) -> float:
        if step < plan["warm"]:
            return (step + 1) / max(1, plan["warm"])
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - plan["warm"]) / max(1, plan["total"] - plan["warm"]))))

    return Run(args, data, model, ddp, ema, opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at), plan,
               torch.amp.GradScaler(enabled=dtype == torch.float16 and device.type == "cuda"), criterion, dtype, device,
               BatchAugment(args.augment, torch.Generator().manual_seed(args.seed + 1000 * rank)),
               make_mixup(args, len(data.classes)), load_teachers(args.teachers, data.classes, device),
               {"epoch": 0, "step": 0, "best_f1": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": [],
                "train_seconds": 0.0, "epochs": args.epochs})


def resume(run: Run, ckpt: Path, verbose: bool) -> None:
    """Continue from ``ckpt`` (model, optimiser, schedule, EMA, epoch state) when ``--resume`` and it exists."""
    if run.args.resume and ckpt.is_file():
        c = torch.load(ckpt, map_location=run.device, weights_only=True)
        run.model.load_state_dict(c["model"])
        run.opt.load_state_dict(c["optimizer"])
        run.sched.load_state_dict(c["scheduler"])
        if run.ema is not None and "ema" in c:
            run.ema.module.load_state_dict(c["ema"])
        run.state = {**c["state"], "epochs": run.args.epochs}  # the epochs asked for now (a run may be extended)
        if verbose:
            print(f"resumed from {ckpt} at epoch {run.state['epoch']}", flush=True)
    run.plan["total"] = run.state["epochs"] * run.plan["steps_per_epoch"]


def train_one_epoch(run: Run, ep: int, verbose: bool) -> tuple[float, bool]:
    """One pass over the batches; returns (mean training loss, whether ``--max-steps`` was reached)."""
    args, state = run.args, run.state
    run.data.sampler.set_epoch(ep)
    run.ddp.train()
    run_loss, seen = 0.0, 0
    bar = tqdm(run.data.batches, desc=f"epoch {ep + 1}/{state['epochs']}", disable=not verbose, leave=False,
               unit="batch")
    for xb, yb in bar:
        xb, yb = xb.to(run.device, non_blocking=True), yb.to(run.device, non_blocking=True)
        x01 = run.augment(xb)
        target = yb
        if run.mix is not None and len(yb) % 2 == 0:
            x01, target = run.mix(x01, yb)
        xb = normalize(x01, run.data.cfg)
        if args.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(run.device.type, dtype=run.dtype or torch.float32, enabled=run.dtype is not None):
            logits = run.ddp(xb)
            loss = label_loss(logits, target, run.criterion)
            if run.teachers:
                soft = teacher_probs(run.teachers, x01, args.kd_temperature, run.dtype, args.channels_last,
                                     tta=args.kd_teacher_tta)
                loss = (1 - args.kd_alpha) * loss + args.kd_alpha * distill_loss(logits, soft, args.kd_temperature)
        run.opt.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.opt)
        run.scaler.update()
        run.sched.step()
        if run.ema is not None:
            run.ema.update(run.model)
        state["step"] += 1
        run_loss += float(loss.detach()) * len(yb)
        seen += len(yb)
        bar.set_postfix(loss=f"{run_loss / seen:.3f}", lr=f"{run.sched.get_last_lr()[0]:.2e}")
        if args.max_steps and state["step"] >= args.max_steps:
            return run_loss / max(1, seen), True
    return run_loss / max(1, seen), False


def validate(run: Run) -> tuple[float, float]:
    """(macro-F1, accuracy) of the selected weights on the whole val split (every rank scores it, so all reach the
    same decision)."""
    lg = predict_logits(run.selected, run.data.val, run.device, run.dtype, run.args.channels_last)
    return (float(f1_score(run.data.val.targets, lg.argmax(1), average="macro")),
            float((lg.argmax(1) == np.asarray(run.data.val.targets)).mean()))


def end_of_epoch(run: Run, ep: int, loss: float, t0: float, out: Path, main_proc: bool) -> bool:
    """Validate, record (the epoch's seconds from ``t0``, validation included), keep the best weights and the
    checkpoint; returns whether to stop early."""
    args, state = run.args, run.state
    f1, acc = validate(run)
    seconds = time.perf_counter() - t0
    state["epoch"] = ep + 1
    state["history"].append({"epoch": ep + 1, "train_loss": loss, "val_macro_f1": f1, "val_accuracy": acc,
                             "seconds": round(seconds, 1)})
    if args.time_budget_s > 0:
        fit_schedule(state, args.epochs, args.time_budget_s)
        run.plan["total"] = state["epochs"] * run.plan["steps_per_epoch"]
    improved = f1 > state["best_f1"]
    if improved:
        state["best_f1"], state["best_epoch"], state["bad_epochs"] = f1, ep + 1, 0
    else:
        state["bad_epochs"] += 1
    if main_proc:
        print(f"epoch {ep + 1}: loss {loss:.4f} val macro-F1 {f1:.4f} acc {acc:.4f}{' *' if improved else ''} "
              f"({seconds:.0f}s)", flush=True)
        if improved or args.select == "last":
            torch.save(run.selected.state_dict(), out / "best.pt")
            state["selected_epoch"] = ep + 1
        torch.save({"model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
                    "scheduler": run.sched.state_dict(),
                    **({"ema": run.ema.module.state_dict()} if run.ema is not None else {}), "state": state},
                   out / "last.pt")
    if state["bad_epochs"] >= args.patience:
        if main_proc:
            print(f"early stop: no val macro-F1 gain for {args.patience} epochs", flush=True)
        return True
    return False


def choose_tta(run: Run) -> tuple[bool, dict]:
    """Whether the bundle ships with test-time augmentation: ``--tta on``/``off``, or (``auto``) chosen on the val
    split only, when it gains more than 0.002 macro-F1; returns (tta, {str(flag): val macro-F1})."""
    if run.args.tta != "auto":
        return run.args.tta == "on", {}
    val_choice = {}
    for flag in (False, True):
        lg = predict_logits(run.model, run.data.val, run.device, run.dtype, run.args.channels_last, tta=flag)
        val_choice[str(flag)] = float(f1_score(run.data.val.targets, lg.argmax(1), average="macro"))
    return val_choice["True"] > val_choice["False"] + 0.002, val_choice


def write_bundle(run: Run, out: Path, command: str, resolved: dict, world: int):
    """The best weights as a bundle in ``out/bundle``, with how they were trained."""
    from bmcore.tasks import get_task

    args, state, data = run.args, run.state, run.data
    tta, val_choice = choose_tta(run)
    return save_bundle(
        out / "bundle", run.model.to("cpu", memory_format=torch.contiguous_format), task=args.task,
        classes=data.classes, backbone=args.backbone, data_config=data.cfg,
        name=args.bundle_name or f"{args.task}-{args.backbone}-{data.cfg.input_size}px",
        extra={
            "inference": {"tta": tta, "tta_val_macro_f1": val_choice or None},
            "classes_missing_from_task": [c for c in get_task(args.task).classes if c not in data.classes],
            "training": {
                "command": command, "config": resolved, "weights_source": run.plan["weight_source"],
                "data": {"root": Path(args.data_root).name, "splits": Path(args.splits).name,
                         "train": {c: int(n) for c, n in zip(data.classes, data.counts)}, "val": len(data.val)},
                "epochs_run": state["epoch"], "epochs_planned": state["epochs"], "best_epoch": state["best_epoch"],
                "selected": args.select, "selected_epoch": state.get("selected_epoch", state["best_epoch"]),
                "teachers": [{"name": b.name, "weights_sha256": b.sha256} for b, _ in run.teachers],
                "selected_weights": "ema" if run.ema is not None else "model",
                "best_val_macro_f1": state["best_f1"], "history": state["history"],
                "train_seconds": round(state["train_seconds"], 1), "amp": str(run.dtype).replace("torch.", ""),
                "world_size": world, "hardware": hardware(run.device)},
        })


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    main_proc = rank == 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = {k: getattr(args, k) for k in DEFAULTS}
    command = "python -m train.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if main_proc:
        (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    data = prepare_data(args, rank, world, device)
    model, weight_source = build_model(args, data.classes, data.cfg.input_size, device)
    if args.init_from and args.imprint:
        imprinted = imprint_new_classes(model, data, args.init_from, device, args.channels_last)
        if imprinted and main_proc:
            print(f"imprinted classifier rows: {', '.join(imprinted)}", flush=True)
    run = make_run(args, data, model, weight_source, rank, world, device)
    resume(run, out / "last.pt", main_proc)
    stop = False
    while run.state["epoch"] < run.state["epochs"] and not stop:
        ep = run.state["epoch"]
        t0 = time.perf_counter()
        loss, stop = train_one_epoch(run, ep, main_proc)
        run.state["train_seconds"] += time.perf_counter() - t0
        stop = end_of_epoch(run, ep, loss, t0, out, main_proc) or stop
    if world > 1:
        dist.barrier()
    if not main_proc:
        dist.destroy_process_group()
        return 0

    model.load_state_dict(torch.load(out / "best.pt", map_location=device, weights_only=True))
    bundle = write_bundle(run, out, command, resolved, world)
    report = evaluate(bundle, args.data_root, args.splits, split="test", fit_calibration=True,
                      write=args.evaluate_test) if args.evaluate_test else None
    if report:
        m = report["metrics"]
        print(f"test: acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} ECE {report['ece_before_temperature']:.4f}"
              f" -> {m['ece']:.4f} (T={report['temperature']:.3f}, tta={report['tta']})", flush=True)
    if args.gate:
        from .ood import fit_and_measure

        g = fit_and_measure(bundle, args.data_root, args.splits)
        print(f"gate: refuses {g['val_rejection']:.3f} of val, {g['test_rejection']:.3f} of test crops; "
              f"AUROC {g['auroc']['gate']:.3f} on {g['ood_images']} out-of-distribution images", flush=True)
    print(f"bundle: {bundle.path}", flush=True)
    if world > 1:
        dist.destroy_process_group()
    return 0


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


if __name__ == "__main__":
    raise SystemExit(main())
