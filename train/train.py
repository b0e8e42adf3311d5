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

DEFAULTS: dict = {
    "data_root": "../shared/data/bm-dev",
    "splits": "train/splits/bm-dev_seed42.csv",
    "task": "bm14",
    "backbone": "mobilenetv2",
    "weights": "auto",
    "img_size": None,  # None: the backbone's default
    "denoise_sharpen": False,
    "epochs": 20,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 1.0,
    "label_smoothing": 0.1,
    "balance": "sampler",  # sampler | loss | none
    "augment": "strong",  # strong | light | none
    "amp": "auto",  # auto | bf16 | fp16 | none
    "channels_last": True,
    "patience": 6,
    "seed": 42,
    "workers": 0,
    "threads": 0,  # 0: torch's default
    "out": "runs/default",
    "bundle_name": None,
    "resume": True,
    "tta": "auto",  # auto (chosen on val) | on | off
    "max_steps": 0,  # >0: stop after this many optimiser steps (smoke tests)
    "limit_per_class": 0,  # >0: at most this many crops per class and split (smoke tests)
    "evaluate_test": True,
    "gate": False,  # fit + calibrate the quality / out-of-distribution gate into the bundle (train.ood)
    "preload": True,  # decode each split once into one uint8 tensor on the training device (else a DataLoader)
    "mixup": 0.0,  # mixup alpha (timm.data.Mixup); 0: off
    "cutmix": 0.0,  # cutmix alpha; 0: off (with both on, each batch takes one of the two)
    "ema_decay": 0.0,  # >0: keep an exponential moving average of the weights (timm ModelEmaV3) and select/ship it
    "teachers": "",  # comma-separated bundle folders: knowledge distillation from their averaged soft labels
    "kd_alpha": 0.5,  # weight of the distillation term (the rest: the labels)
    "kd_temperature": 2.0,
    "kd_teacher_tta": False,  # the teachers' soft labels averaged over the 4 dihedral views the app's TTA uses
    "init_from": "",  # a bundle folder of the same backbone and classes: start from its weights (fine-tuning)
    "time_budget_s": 0,  # >0: after each epoch, shorten the schedule (cosine included) so training ends in time
}


def str2bool(v: str) -> bool:
    return str(v).lower() in ("1", "true", "yes", "on")


def parse_args(argv=None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
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
        if isinstance(v, bool):
            ap.add_argument(flag, type=str2bool, metavar="BOOL")
        elif v is None:
            ap.add_argument(flag, type=lambda s: None if s in ("", "none", "None") else (int(s) if s.isdigit() else s))
        else:
            ap.add_argument(flag, type=type(v))
    ap.set_defaults(**cfg)
    return ap.parse_args(argv)


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

    spec = get_backbone(args.backbone)
    size = int(args.img_size or spec.input_size)
    dcfg = DataConfig(size, spec.mean, spec.std, bool(args.denoise_sharpen))
    df = load_splits(args.splits)
    classes = task_classes_present(df, args.task)
    df = df[df.label.isin(classes)]
    tr_df = limit(df[df.split == "train"], args.limit_per_class, args.seed)
    va_df = limit(df[df.split == "val"], args.limit_per_class, args.seed)
    train_ds = CropDataset(args.data_root, tr_df, classes, dcfg)
    val_ds = CropDataset(args.data_root, va_df, classes, dcfg)

    counts = np.bincount(train_ds.targets, minlength=len(classes)).astype(np.float64)
    sample_w = (1.0 / counts)[train_ds.targets] if args.balance == "sampler" else None
    sampler = EpochSampler(len(train_ds), sample_w, args.seed, rank, world)
    batches = make_batches(train_ds, sampler, args, device, world)
    class_w = torch.tensor(counts.sum() / (len(classes) * counts), dtype=torch.float32) if args.balance == "loss" else None
    augment = BatchAugment(args.augment, torch.Generator().manual_seed(args.seed + 1000 * rank))
    mix = make_mixup(args, len(classes))
    teachers = load_teachers(args.teachers, classes, device)

    model, weight_source = build_pretrained(args.backbone, len(classes), args.weights, img_size=size)
    if args.init_from:
        from bmcore.bundle import load_bundle

        init = load_bundle(args.init_from)
        if init.backbone != args.backbone or list(init.classes) != list(classes):
            raise SystemExit(f"--init-from {args.init_from}: {init.backbone} {init.classes} is not {args.backbone} {classes}")
        model.load_state_dict(init.build_model().state_dict())
        weight_source = f"bundle:{init.name} sha256:{init.sha256[:16]} (itself from {init.meta['training']['weights_source']})"
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    ema = None
    if args.ema_decay > 0:
        import timm.utils

        ema = getattr(timm.utils, "ModelEmaV3", timm.utils.ModelEmaV2)(model, decay=args.ema_decay)
    selected = (lambda: ema.module) if ema is not None else (lambda: model)  # what is validated, kept and shipped
    dtype = amp_dtype(args.amp, device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16 and device.type == "cuda")
    criterion = torch.nn.CrossEntropyLoss(weight=class_w.to(device) if class_w is not None else None,
                                          label_smoothing=args.label_smoothing)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = max(1, len(batches))
    plan = {"total": args.epochs * steps_per_epoch, "warm": int(args.warmup_epochs * steps_per_epoch)}

    def lr_at(step: int) -> float:
        if step < plan["warm"]:
            return (step + 1) / max(1, plan["warm"])
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - plan["warm"]) / max(1, plan["total"] - plan["warm"]))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    state = {"epoch": 0, "step": 0, "best_f1": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": [],
             "train_seconds": 0.0, "epochs": args.epochs}
    ckpt = out / "last.pt"
    if args.resume and ckpt.is_file():
        c = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(c["model"])
        opt.load_state_dict(c["optimizer"])
        sched.load_state_dict(c["scheduler"])
        if ema is not None and "ema" in c:
            ema.module.load_state_dict(c["ema"])
        state = {**c["state"], "epochs": args.epochs}  # the epochs asked for now (a resumed run may be extended)
        if main_proc:
            print(f"resumed from {ckpt} at epoch {state['epoch']}", flush=True)
    plan["total"] = state["epochs"] * steps_per_epoch

    stop = False
    while state["epoch"] < state["epochs"] and not stop:
        ep = state["epoch"]
        sampler.set_epoch(ep)
        ddp.train()
        t0 = time.perf_counter()
        run_loss, seen = 0.0, 0
        bar = tqdm(batches, desc=f"epoch {ep + 1}/{state['epochs']}", disable=not main_proc, leave=False,
                   unit="batch")
        for xb, yb in bar:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            x01 = augment(xb)
            target = yb
            if mix is not None and len(yb) % 2 == 0:
                x01, target = mix(x01, yb)
            xb = normalize(x01, dcfg)
            if args.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = ddp(xb)
                loss = label_loss(logits, target, criterion)
                if teachers:
                    soft = teacher_probs(teachers, x01, args.kd_temperature, dtype, args.channels_last,
                                         tta=args.kd_teacher_tta)
                    loss = (1 - args.kd_alpha) * loss + args.kd_alpha * distill_loss(logits, soft, args.kd_temperature)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if ema is not None:
                ema.update(model)
            state["step"] += 1
            run_loss += float(loss.detach()) * len(yb)
            seen += len(yb)
            bar.set_postfix(loss=f"{run_loss / seen:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            if args.max_steps and state["step"] >= args.max_steps:
                stop = True
                break
        state["train_seconds"] += time.perf_counter() - t0
        # validation: every rank scores the full (small) val split, so all reach the same decision
        lg = predict_logits(selected(), val_ds, device, dtype, args.channels_last)
        f1 = float(f1_score(val_ds.targets, lg.argmax(1), average="macro"))
        acc = float((lg.argmax(1) == np.asarray(val_ds.targets)).mean())
        state["epoch"] = ep + 1
        state["history"].append({"epoch": ep + 1, "train_loss": run_loss / max(1, seen), "val_macro_f1": f1,
                                 "val_accuracy": acc, "seconds": round(time.perf_counter() - t0, 1)})
        if args.time_budget_s > 0:
            fit_schedule(state, args.epochs, args.time_budget_s)
            plan["total"] = state["epochs"] * steps_per_epoch
        improved = f1 > state["best_f1"]
        if improved:
            state["best_f1"], state["best_epoch"], state["bad_epochs"] = f1, ep + 1, 0
        else:
            state["bad_epochs"] += 1
        if main_proc:
            print(f"epoch {ep + 1}: loss {run_loss / max(1, seen):.4f} val macro-F1 {f1:.4f} acc {acc:.4f}"
                  f"{' *' if improved else ''} ({time.perf_counter() - t0:.0f}s)", flush=True)
            if improved:
                torch.save(selected().state_dict(), out / "best.pt")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        **({"ema": ema.module.state_dict()} if ema is not None else {}), "state": state}, ckpt)
        if state["bad_epochs"] >= args.patience:
            if main_proc:
                print(f"early stop: no val macro-F1 gain for {args.patience} epochs", flush=True)
            stop = True
    if world > 1:
        dist.barrier()
    if not main_proc:
        dist.destroy_process_group()
        return 0

    model.load_state_dict(torch.load(out / "best.pt", map_location=device, weights_only=True))
    tta = args.tta == "on"
    val_choice = {}
    if args.tta == "auto":  # model selection on val only
        for flag in (False, True):
            lg = predict_logits(model, val_ds, device, dtype, args.channels_last, tta=flag)
            val_choice[str(flag)] = float(f1_score(val_ds.targets, lg.argmax(1), average="macro"))
        tta = val_choice["True"] > val_choice["False"] + 0.002
    bundle = save_bundle(
        out / "bundle", model.to("cpu", memory_format=torch.contiguous_format), task=args.task, classes=classes,
        backbone=args.backbone, data_config=dcfg, name=args.bundle_name or f"{args.task}-{args.backbone}-{size}px",
        extra={
            "inference": {"tta": tta, "tta_val_macro_f1": val_choice or None},
            "classes_missing_from_task": [c for c in __import__("bmcore.tasks").tasks.get_task(args.task).classes
                                          if c not in classes],
            "training": {
                "command": command, "config": resolved, "weights_source": weight_source,
                "data": {"root": Path(args.data_root).name, "splits": Path(args.splits).name,
                         "train": {c: int(n) for c, n in zip(classes, counts)}, "val": len(val_ds)},
                "epochs_run": state["epoch"], "epochs_planned": state["epochs"], "best_epoch": state["best_epoch"],
                "teachers": [{"name": b.name, "weights_sha256": b.meta.get("weights_sha256")} for b, _ in teachers],
                "selected_weights": "ema" if ema is not None else "model",
                "best_val_macro_f1": state["best_f1"], "history": state["history"],
                "train_seconds": round(state["train_seconds"], 1), "amp": str(dtype).replace("torch.", ""),
                "world_size": world, "hardware": hardware(device)},
        })
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
