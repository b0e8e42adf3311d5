"""Command line: ``python -m bmcore classify`` (batch), ``archive`` (resumable, optionally on Ray), ``bench``, ``cases``, ``users``, ``agreement`` and ``learn``.

    python -m bmcore classify crops/ --bundle assets/models/bm14-mobilenetv2-224px --out cells.csv
    python -m bmcore classify smear.zip --out cells.csv --heatmaps heatmaps/
    python -m bmcore classify field1.jpg field2.jpg --out cells.csv [--um-per-px 0.073]   # camera fields: cells found
    python -m bmcore archive TCIA/ --out results/ [--ray [ADDRESS]] [--csv all.csv]   # resumable, Parquet shards
    python -m bmcore bench --out bench/results/cpu.json
    python -m bmcore users add alice --role pathologist --display-name "Dr Alice Smith"   # password asked
    python -m bmcore users list
    python -m bmcore agreement [--json]                                  # the model against the signed labels
    python -m bmcore learn --from-store --out data/candidates            # a candidate from the signed cases
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import RUO_STATEMENT
from .auth import ROLES

ASSETS_MODELS = Path(__file__).resolve().parent.parent / "assets" / "models"


def default_bundle() -> Path:
    from .bundle import find_bundles, pick_default

    found = pick_default(find_bundles(ASSETS_MODELS))
    if found is None:
        raise SystemExit(f"no bundle under {ASSETS_MODELS}; pass --bundle")
    return found


def cmd_classify(a) -> int:
    from PIL import Image
    from tqdm import tqdm

    from .fields import expand_fields
    from .inputs import from_paths, safe_display_name
    from .predictor import Predictor
    from .differential import differential
    from .cellrows import prediction_rows, rows_to_csv

    pred = Predictor(a.bundle or default_bundle(), threshold=a.threshold, device=a.device)
    items = from_paths(a.inputs)
    if not items:
        print("no images found", file=sys.stderr)
        return 1
    # smear-field images (too large for one cell, with nucleated cells in them) become one item per found cell
    try:
        items, fields = expand_fields(items, pred.bundle.crop_side, a.um_per_px)
    except ValueError as exc:  # a scale out of range
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for f in fields:
        cut = sum(c.border for c in f["cells"])
        print(f"field {f['name']} ({f['size'][0]}x{f['size'][1]} px): {len(f['cells'])} nucleated cells found, "
              f"{cut} cut by the border (not classified); scale {f['scale'].describe()}")
    bar = tqdm(total=len([i for i in items if i.ok]), unit="cell", desc="classifying")
    done = [0]

    def progress(n, total):
        bar.update(n - done[0])
        done[0] = n

    results = pred.predict_items(items, progress=progress)
    bar.close()
    rows = prediction_rows(results, pred.classes)
    for row, it in zip(rows, items):  # where each cell of a field came from (empty for single-cell crops)
        o = it.origin or {}
        row.update({"source_field": o.get("field", ""), "field_cell": o.get("cell_number", ""),
                    "box_x0_y0_x1_y1": " ".join(map(str, o["box"])) if o else "",
                    "um_per_px": round(o["um_per_px"], 5) if o else "", "scale_source": o.get("scale_source", "")})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(rows_to_csv(rows))
    bad = [r for r in results if not r.ok]
    for r in bad:
        print(f"skipped {r.name}: {r.error}", file=sys.stderr)
    refused = [r for r in results if r.ok and r.rejected]
    for r in refused:
        print(f"rejected {r.name}: {r.reject_reason} (no class given; not in the differential)", file=sys.stderr)
    if a.heatmaps:
        out = Path(a.heatmaps)
        out.mkdir(parents=True, exist_ok=True)
        ok_items = [(it, r) for it, r in zip(items, results) if r.ok and not r.rejected]
        for i, (it, r) in enumerate(tqdm(ok_items, unit="cell", desc="heatmaps")):
            _, ov, code = pred.explain(it.source, r.code, a.cam)
            Image.fromarray(ov).save(out / f"{i:05d}_{code}_{Path(safe_display_name(r.name)).stem}.png")
    d = differential([r.code if r.ok and not r.rejected else None for r in results], pred.classes,
                     uncertain=[r.needs_review for r in results], hairy=[r.hairy_flag for r in results],
                     rejected=[r.ok and r.rejected for r in results])
    print(f"{len(results) - len(bad) - len(refused)} cells classified, {len(refused)} not judged by the gate "
          f"(unlike the model's training crops), {len(bad)} skipped; wrote {a.out}")
    print(f"{sum(r.needs_review for r in results)} cells need a person's review ({pred.rules.describe()})")
    if fields:
        from_fields = [r for r, it in zip(results, items) if it.origin and r.ok]
        print(f"{len(from_fields)} whole cells from {len(fields)} field images, {sum(r.rejected for r in from_fields)} "
              "of them refused by the model's gate (it knows bone marrow crops; expect it to refuse many "
              "peripheral-blood cells)")
    print(f"differential over {d.denominator} cells (excluded: {d.excluded or 'none'}):")
    for row in d.table():
        print(f"  {row['class']} {row['name']:<22s} {row['count']:5d} {row['percent']:5.1f}%")
    print(RUO_STATEMENT)
    return 0 if len(bad) < len(results) else 2


def _store(a):
    from .cases import CaseStore

    return CaseStore(a.db or os.environ.get("BM_DATABASE_URL") or None)


def _read_password(a, prompt: str = "Password: ", confirm: bool = True) -> str:
    """From standard input with --password-stdin (first line; for scripts), else asked twice without echo."""
    import getpass

    if getattr(a, "password_stdin", False):
        return sys.stdin.readline().rstrip("\r\n")
    pw = getpass.getpass(prompt)
    if confirm and getpass.getpass("Again: ") != pw:
        raise SystemExit("error: the two passwords differ; nothing was changed")
    return pw


def cmd_cases(a) -> int:
    from .cases import CaseError

    store = _store(a)
    if a.action == "list":
        for c in store.list_cases():
            print(f"{c['case']}\t{c['status']}\t{c['cells']} cells\t{c['created']:%Y-%m-%d %H:%M}")
        return 0
    cid = store.case_id(a.case or "")
    if cid is None:
        print(f"no case {a.case!r}", file=sys.stderr)
        return 1
    if not a.as_user:
        print("error: deleting a case needs an admin account: --as NAME (its password is asked)", file=sys.stderr)
        return 2
    try:
        admin = store.authenticate(a.as_user, _read_password(a, f"Password for {a.as_user}: ", confirm=False))
        store.delete_case(cid, admin)
    except CaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"deleted case {a.case!r} with its cells, thumbnails and audit trail (logged as deleted by {a.as_user})")
    return 0


def cmd_agreement(a) -> int:
    """The lab's agreement figures (``bmcore.agreement``): whoever runs commands on the server reads them."""
    import dataclasses
    import json

    from .agreement import agreement_text, lab_agreement

    fig = lab_agreement(_store(a))
    print(json.dumps(dataclasses.asdict(fig), indent=1) if a.json else agreement_text(fig))
    return 0


def cmd_users(a) -> int:
    """Accounts are managed by whoever runs commands on the server (like the database itself); each change is
    logged in login_events as made from the command line."""
    from .cases import CaseError

    store = _store(a)
    try:
        if a.action == "list":
            rows = store.list_users()
            if not rows:
                print("no user accounts yet; create the first admin: python -m bmcore users add NAME --role admin")
            for u in rows:
                state = "disabled" if u["disabled"] else "active"
                last = f"{u['last_login']:%Y-%m-%d %H:%M}" if u["last_login"] else "never"
                print(f"{u['username']}\t{u['role']}\t{u['source']}\t{state}\tlast sign-in {last}\t{u['name']}")
            return 0
        if a.action == "add":
            if not a.role:
                raise CaseError("--role is required: " + ", ".join(ROLES[:-1]) + " or " + ROLES[-1])
            store.add_user(a.name, a.role, _read_password(a), display_name=a.display_name or "")
            print(f"added {a.name} ({a.role})")
        elif a.action == "reset":
            store.update_user(a.name, password=_read_password(a, "New password: "))
            print(f"password of {a.name} reset; its lock (if any) is cleared")
        elif a.action in ("disable", "enable"):
            store.update_user(a.name, disabled=a.action == "disable")
            print(f"{a.name} {a.action}d")
        elif a.action == "role":
            if not a.role:
                raise CaseError("--role is required")
            store.update_user(a.name, role=a.role)
            print(f"{a.name} is now {a.role}")
    except CaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_learn(rest: list[str]) -> int:
    """``python -m bmcore learn ...``: the training side's ``python -m train.learn``, run as its own process (learning
    takes minutes of every core; a process of its own is what the app's background job stops when cancelled)."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    return subprocess.call([sys.executable, "-m", "train.learn", *rest], env=env)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["learn"]:
        return cmd_learn(args[1:])
    ap = argparse.ArgumentParser(prog="python -m bmcore", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("classify", help="classify a folder, files or a ZIP of crops into a CSV")
    c.add_argument("inputs", nargs="+", help="image files, folders or .zip archives")
    c.add_argument("--bundle", default=None, help="model bundle folder (default: the bundled default model)")
    c.add_argument("--out", required=True, help="CSV to write")
    c.add_argument("--heatmaps", default=None, help="folder for Grad-CAM overlays (PNG), one per cell")
    c.add_argument("--cam", default="gradcam")
    c.add_argument("--threshold", type=float, default=None,
                   help="confidence under which a cell is 'uncertain' (default: the bundle's validated review rule)")
    c.add_argument("--device", default=None)
    c.add_argument("--um-per-px", type=float, default=None,
                   help="scale of field images in micrometres per pixel (default: estimated from the red cells)")
    ar = sub.add_parser("archive", help="classify a folder tree, ZIP or file list into Parquet shards, resumable; "
                                        "--ray runs it on Ray Data")
    ar.add_argument("inputs", nargs="+", help="folders (walked recursively), .zip archives, .txt lists of paths, files")
    ar.add_argument("--bundle", default=None, help="model bundle folder (default: the bundled default model)")
    ar.add_argument("--out", required=True, help="folder of Parquet shards (a rerun skips the crops written there)")
    ar.add_argument("--csv", default=None, help="also write every row under --out as one CSV")
    ar.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="run on Ray Data: a local cluster, or ADDRESS (e.g. auto, ray://head:10001)")
    ar.add_argument("--concurrency", type=int, default=2, help="classifier actors (Ray) / cores (plain) in all")
    ar.add_argument("--num-cpus", type=float, default=1, help="cores per actor (its ONNX Runtime threads)")
    ar.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor (Ray; torch on the GPU)")
    ar.add_argument("--chunk", type=int, default=256, help="crops per shard and per Ray batch")
    b = sub.add_parser("bench", help="measure latency and memory; writes JSON")
    b.add_argument("--bundle", default=None)
    b.add_argument("--data", default="../shared/data/bm-dev")
    b.add_argument("--cells", type=int, default=500)
    b.add_argument("--cams", type=int, default=20)
    b.add_argument("--device", default=None)
    b.add_argument("--out", default=None)
    cs = sub.add_parser("cases", help="list or delete stored cases")
    cs.add_argument("action", choices=["list", "delete"])
    cs.add_argument("case", nargs="?", help="case id to delete")
    cs.add_argument("--as", dest="as_user", default=None, help="deleting: the admin account doing it")
    cs.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    sub.add_parser("learn", help="learn a candidate model from the lab's signed cases or a labelled folder, held to "
                                 "acceptance criteria (python -m bmcore learn --help)")
    ag = sub.add_parser("agreement", help="the model against the signed labels over the store's signed cases")
    ag.add_argument("--json", action="store_true", help="every figure as JSON instead of text")
    us = sub.add_parser("users", help="user accounts: add, list, disable, enable, reset (password), role")
    us.add_argument("action", choices=["add", "list", "disable", "enable", "reset", "role"])
    us.add_argument("name", nargs="?", help="user name (no spaces)")
    us.add_argument("--role", choices=list(ROLES), default=None)
    us.add_argument("--display-name", default=None, help="the name shown on signatures and reports")
    us.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of standard input (for scripts); else it is asked")
    for p in (cs, us, ag):
        p.add_argument("--db", default=None, help="SQLAlchemy URL or SQLite file (default: BM_DATABASE_URL or "
                                                  "data/bmcases.db)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "classify":
            return cmd_classify(a)
        if a.cmd == "cases":
            return cmd_cases(a)
        if a.cmd == "archive":
            from .archive import cmd_archive

            return cmd_archive(a, str(a.bundle or default_bundle()))
        if a.cmd == "agreement":
            return cmd_agreement(a)
        if a.cmd == "users":
            if a.action != "list" and not a.name:
                ap.error(f"users {a.action} needs a user name")
            return cmd_users(a)
        from .bench import run_bench

        return run_bench(a.bundle or default_bundle(), a.data, a.cells, a.cams, a.device, a.out)
    except Exception as exc:  # noqa: BLE001 -- a bundle that cannot be trusted is a message, anything else a traceback
        from .bundle import BundleError  # imported here: "users" and "cases" never load torch

        if not isinstance(exc, BundleError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
