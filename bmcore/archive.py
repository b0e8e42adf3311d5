"""Archive-scale classification: a folder tree, a ZIP or a file list of crops into Parquet shards, resumable.

    python -m bmcore archive TCIA/ --out results/                    # one process, the app's ONNX path
    python -m bmcore archive TCIA/ --out results/ --ray              # Ray Data on a local cluster
    python -m bmcore archive crops.zip list.txt --out results/ --ray ray://head:10001 --concurrency 8 --csv all.csv

Every crop goes through the app's own code: ``bmcore.preprocess`` decodes it, ``Predictor`` runs the bundle's chosen
engine with its gate and review rules, ``bmcore.cellrows.prediction_rows`` makes its row. Each row adds the crop's
sha256, the bundle's name and sha256 and the inference setting. Rows are written as Parquet shards (one per chunk,
written to a temporary name and renamed, so a shard is whole or absent); a rerun reads the shards' hashes and skips
every crop already written, so a run killed half way loses at most the chunks in flight. A file that cannot be read
or decoded is a row with its error, never a crash; a shard left unreadable by a crash is set aside (``.corrupt``) and
its crops redone.

Ray (an optional install: ``requirements-ray.txt``, ``make ray``) runs one ``Classifier`` per actor
(``map_batches`` with a callable class, ``concurrency`` actors of ``num_cpus`` cores each, ``num_gpus`` where a GPU
is present), each with its own ONNX Runtime session of ``num_cpus`` threads; the driver streams the results
(Ray Data's backpressure keeps memory bounded) and writes the shards. Without Ray the same ``Classifier`` runs
in-process on chunks of the list.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import uuid
import zipfile
from pathlib import Path

from .inputs import MAX_RATIO, _is_litter, _not_image, safe_member_name
from .preprocess import DEFAULT_MAX_BYTES, IMAGE_SUFFIXES

LIST_SUFFIXES = (".txt", ".lst")
CHUNK = 256  # crops per shard (and per Ray batch)


def list_sources(inputs: list[str | Path]) -> list[dict]:
    """One row per crop, nothing read yet: ``{"source": shown name, "path": file, "member": ZIP member or ""}``.

    A folder is walked recursively (sorted; operating-system litter skipped), a ``.zip`` lists its members, a
    ``.txt`` / ``.lst`` holds one path per line (relative to the list's folder; blank lines and ``#`` comments
    skipped). Any other file is one crop; a path that does not exist is one row whose decode reports it."""
    rows: list[dict] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                rel = f.relative_to(p).as_posix()
                if not _is_litter(rel):
                    rows.append({"source": f"{p.name}/{rel}", "path": str(f), "member": ""})
        elif p.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(p) as z:
                    names = [i.filename for i in z.infolist() if not i.is_dir() and not _is_litter(i.filename)]
            except (OSError, zipfile.BadZipFile) as exc:
                rows.append({"source": p.name, "path": str(p), "member": "", "error": f"unreadable archive: {exc}"})
                continue
            rows += [{"source": f"{p.name}!{safe_member_name(n)}", "path": str(p), "member": n} for n in names]
        elif p.suffix.lower() in LIST_SUFFIXES:
            for line in p.read_text(errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    f = Path(line) if Path(line).is_absolute() else p.parent / line
                    rows.append({"source": line, "path": str(f), "member": ""})
        else:
            rows.append({"source": p.name, "path": str(p), "member": ""})
    for r in rows:
        r.setdefault("error", "")
    return rows


class Classifier:
    """A callable over a batch of ``list_sources`` rows (columns as lists or arrays): reads each crop, hashes it,
    drops those in ``done`` (hashes already written), and classifies the rest with the app's Predictor. Its result
    is the batch's output rows as columns (``rows_to_columns``). One per Ray actor, or one in the plain process."""

    def __init__(self, bundle: str, threads: int = 1, done: frozenset | None = None, device: str | None = None):
        os.environ["BM_INFERENCE_THREADS"] = str(max(1, int(threads)))
        from .predictor import Predictor

        # a one-thread session runs micro-batches of PARALLEL_BATCH (4), as the app's data-parallel path does: ~5%
        # faster than 16 on a CPU (bmcore.predictor)
        self.pred = Predictor(bundle, device=device, parallel=threads > 1,
                              batch_size=Predictor.PARALLEL_BATCH if threads == 1 and device == "cpu" else None)
        self.done = done or frozenset()
        self.classes = self.pred.classes
        setting = self.pred.setting
        self.fixed = {"bundle": self.pred.bundle.name, "bundle_sha256": self.pred.bundle.sha256, "setting": setting}
        self._zips: dict[str, zipfile.ZipFile] = {}

    def read(self, path: str, member: str) -> bytes:
        """A crop's bytes (``OSError`` / ``ValueError`` with a reason where they cannot be had safely)."""
        if not member:
            p = Path(path)
            if p.stat().st_size > DEFAULT_MAX_BYTES:
                raise ValueError(f"larger than {DEFAULT_MAX_BYTES // 1024 ** 2} MB")
            return p.read_bytes()
        z = self._zips.get(path) or self._zips.setdefault(path, zipfile.ZipFile(path))
        info = z.getinfo(member)
        if info.file_size > DEFAULT_MAX_BYTES or (info.file_size > 1e6 and info.file_size > MAX_RATIO * max(1, info.compress_size)):
            raise ValueError("refused: too large or too compressed for a crop")
        return z.read(info)

    def __call__(self, batch) -> dict:
        srcs, paths, members, errs = (list(batch[k]) for k in ("source", "path", "member", "error"))
        out, todo = [], []  # (source, sha256, error) for unreadable; (source, sha256, bytes) to classify
        for s, p, m, e in zip(srcs, paths, members, errs):
            if e:
                out.append({"source": s, "sha256": "", **_error_row(s, e, self.classes)})
                continue
            try:
                data = self.read(str(p), str(m))
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                out.append({"source": s, "sha256": "", **_error_row(s, str(exc) or type(exc).__name__, self.classes)})
                continue
            digest = hashlib.sha256(data).hexdigest()
            suffix = Path(str(m or p)).suffix.lower()
            if digest in self.done:
                continue
            if suffix not in IMAGE_SUFFIXES:
                out.append({"source": s, "sha256": digest, **_error_row(s, _not_image(suffix), self.classes)})
            else:
                todo.append((s, digest, data))
        if todo:
            from .cellrows import prediction_rows

            preds = self.pred.predict([t[2] for t in todo], [t[0] for t in todo])
            for (s, digest, _), row in zip(todo, prediction_rows(preds, self.classes)):
                out.append({"source": s, "sha256": digest, **row})
        return rows_to_columns([{**r, **self.fixed} for r in out], self.classes)


def _error_row(name: str, error: str, classes: list[str]) -> dict:
    from .predictor import CellPrediction
    from .cellrows import prediction_rows

    return prediction_rows([CellPrediction(name=name, ok=False, error=error)], classes)[0]


def columns(classes: list[str]) -> dict[str, str]:
    """The shards' columns and their types ("str", "float", "bool"): the same in every shard and every run."""
    from .predictor import CellPrediction
    from .cellrows import prediction_rows

    blank = prediction_rows([CellPrediction(name="", ok=False, error="")], classes)[0]
    num = {"gate_score", "confidence", *(f"p_{c}" for c in classes)}
    flags = {"uncertain", "hairy_flag", "needs_review"}
    return {"source": "str", "sha256": "str", **{k: "float" if k in num else "bool" if k in flags else "str"
                                                    for k in blank if k != "file"},
            "bundle": "str", "bundle_sha256": "str", "setting": "str"}


def rows_to_columns(rows: list[dict], classes: list[str]) -> dict:
    """Rows as typed columns (lists): "" becomes NaN for numbers and None for flags, so every shard has one schema."""
    cols = columns(classes)
    out: dict[str, list] = {k: [] for k in cols}
    for r in rows:
        for k, kind in cols.items():
            v = r.get(k, "")
            out[k].append(float(v) if kind == "float" and v != "" else float("nan") if kind == "float" else
                          bool(v) if kind == "bool" and v != "" else None if kind == "bool" else str(v))
    return out


def _table(cols: dict, classes: list[str]):
    import pyarrow as pa

    kinds = {"str": pa.string(), "float": pa.float64(), "bool": pa.bool_()}
    cols_kinds = columns(classes)
    schema = pa.schema([(k, kinds[v]) for k, v in cols_kinds.items()])
    # a flag column with no value in the batch (every crop unreadable) reaches the driver from Ray as NaNs
    return pa.Table.from_pydict({k: [None if x is None or x != x else bool(x) for x in v]
                                 if cols_kinds[k] == "bool" else list(v) for k, v in cols.items()}, schema=schema)


def write_shard(out: Path, cols: dict, classes: list[str]) -> Path | None:
    """One shard, atomically (a temporary name, then a rename): a crash leaves no half shard under a real name."""
    import pyarrow.parquet as pq

    if not cols["source"]:
        return None
    final = out / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"  # names sort oldest first
    tmp = final.with_suffix(".parquet.tmp")
    pq.write_table(_table(cols, classes), tmp)
    os.replace(tmp, final)
    return final


def written(out: Path) -> tuple[frozenset, int, list[str]]:
    """Hashes already written under ``out`` (crops that need no second pass: classified, or readable and refused
    at decode), the rows written, and the shards set aside as unreadable (renamed ``.corrupt``)."""
    import pyarrow.parquet as pq

    hashes, rows, bad = set(), 0, []
    for tmp in out.glob("*.parquet.tmp"):  # a shard a crash interrupted before its rename
        tmp.unlink()
    for f in sorted(out.glob("*.parquet")):
        try:
            t = pq.read_table(f, columns=["sha256"])
        except Exception as exc:  # noqa: BLE001 - whatever pyarrow raises on a damaged file
            f.rename(f.with_suffix(".corrupt"))
            bad.append(f"{f.name}: {exc}")
            continue
        rows += t.num_rows
        hashes.update(h for h in t.column("sha256").to_pylist() if h)
    return frozenset(hashes), rows, bad


def read_results(out: Path):
    """Every shard under ``out`` as one pandas DataFrame (sorted by source; one row per source and content)."""
    import pandas as pd
    import pyarrow.parquet as pq

    parts = [pq.read_table(f).to_pandas() for f in sorted(out.glob("*.parquet"))]  # named by time: oldest first
    if not parts:
        return pd.DataFrame()
    # a file that could not be read at all (no hash) is tried again by each rerun: its latest row stands, unless a
    # rerun could read it
    df = pd.concat(parts, ignore_index=True)
    hashed, hashless = df[df.sha256 != ""], df[df.sha256 == ""].drop_duplicates("source", keep="last")
    df = pd.concat([hashed, hashless[~hashless.source.isin(hashed.source)]], ignore_index=True)
    return df.sort_values("source", kind="stable").reset_index(drop=True)


def run(inputs: list[str], out: str | Path, bundle: str, *, ray_address: str | None = None, concurrency: int = 2,
        num_cpus: float = 1, num_gpus: float = 0, chunk: int = CHUNK, progress: bool = True,
        log=print) -> dict:
    """Classify ``inputs`` into shards under ``out`` (see the module doc); returns what was done.

    ``ray_address``: None runs in this process; "local" starts a local Ray cluster (``num_cpus`` x ``concurrency``
    cores); anything else is passed to ``ray.init(address=...)`` (an existing cluster, "auto", "ray://...")."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started = False
    if ray_address is not None:
        # connect first, then list the inputs, read what is written and import Ray Data
        started = _connect(ray_address, int(max(1, num_cpus * concurrency)))
    try:
        rows = list_sources(inputs)
        done, before, bad = written(out)
        for b in bad:
            log(f"set aside an unreadable shard (its crops are redone): {b}")
        if before:
            log(f"resuming: {before} rows already written under {out} ({len(done)} crops skipped by content hash)")
        bar = tqdm(total=len(rows), unit="crop", desc="archive", disable=not progress, file=sys.stderr)
        new = 0
        if ray_address is None:
            clf = Classifier(bundle, threads=int(num_cpus * concurrency), done=done)
            for i in range(0, len(rows), chunk):
                part = rows[i:i + chunk]
                cols = clf({k: [r[k] for r in part] for k in ("source", "path", "member", "error")})
                write_shard(out, cols, clf.classes)
                new += len(cols["source"])
                bar.update(len(part))
            classes = clf.classes
        else:
            import logging

            import ray.data

            from .bundle import load_bundle

            classes = load_bundle(bundle).classes
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            ray.data.DataContext.get_current().enable_progress_bars = False  # the driver's own bar counts the crops
            ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // chunk)))
            # device "cpu" unless a GPU is asked for: the ONNX engine on a CPU never imports torch (seconds per worker)
            ds = ds.map_batches(Classifier, fn_constructor_kwargs={"bundle": str(Path(bundle).resolve()),
                                                                   "threads": max(1, int(num_cpus)), "done": done,
                                                                   "device": None if num_gpus else "cpu"},
                                batch_size=chunk, compute=ray.data.ActorPoolStrategy(size=concurrency),
                                num_cpus=num_cpus, num_gpus=num_gpus or None, batch_format="numpy",
                                **actor_options())
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                cols = {k: list(v) for k, v in batch.items()}
                write_shard(out, cols, classes)
                new += len(cols["source"])
                bar.update(len(cols["source"]))
    finally:
        if started:
            import ray

            ray.shutdown()
    bar.close()
    seconds = time.perf_counter() - t0
    return {"inputs": len(rows), "written_before": before, "written_now": new, "skipped_as_written": len(rows) - new,
            "set_aside_shards": bad, "seconds": round(seconds, 2), "out": str(out),
            "classes": classes}


# A node started for the archive carries this resource (``deploy/ray-node.sh``, or the local cluster a job starts): its
# workers already have ``worker_env()``, so the archive's actors need no runtime environment, with which Ray boots
# each worker ~0.4 s later (measured: docs/scaling.md).
ENV_RESOURCE = "bmcore_env"


def worker_env() -> dict[str, str]:
    """What the archive's Ray workers need: this checkout on ``PYTHONPATH``, and nice 0. Ray starts its workers at
    nice 15, and beside any other work at the usual priority they starve (measured: 2,000 crops in 350 s beside a
    2-thread training job, 21 s alone); they are the job's compute, so they run at the priority the CLI runs at."""
    path = [str(Path(__file__).resolve().parent.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path), "RAY_worker_niceness": "0"}


def _connect(ray_address: str, cores: int) -> bool:
    """Connect to Ray ("local": start a cluster of ``cores`` CPUs in this process, its node set up as
    ``deploy/ray-node.sh`` sets one up); whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if ray_address != "local":
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        return True
    saved = dict(os.environ)
    os.environ.update(worker_env())  # the local node's raylet, and so its workers, inherit them
    try:
        ray.init(num_cpus=cores, resources={ENV_RESOURCE: 1}, include_dashboard=False, log_to_driver=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return True


def actor_options() -> dict:
    """The Ray options of the archive's actors: none where every live node was set up for the archive
    (``ENV_RESOURCE``), else a runtime environment carrying ``worker_env()``."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if nodes and all(ENV_RESOURCE in n.get("Resources", {}) for n in nodes):
        return {}
    return {"runtime_env": {"env_vars": worker_env()}}


def cmd_archive(a, bundle: str) -> int:
    """``python -m bmcore archive`` (``bmcore.cli`` parses it) with ``bundle``: see the module doc."""
    from . import RUO_STATEMENT
    from .cellrows import rows_to_csv
    if a.ray is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("error: --ray needs Ray (pip install -r requirements-ray.txt, or make ray)", file=sys.stderr)
            return 1
    res = run(a.inputs, a.out, bundle, ray_address=a.ray, concurrency=a.concurrency, num_cpus=a.num_cpus,
              num_gpus=a.num_gpus, chunk=a.chunk)
    df = read_results(Path(a.out))
    if a.csv:
        Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
        Path(a.csv).write_text(rows_to_csv(df.astype(object).where(df.notna(), "").to_dict("records")) if len(df) else "")
    err = int((df["status"] == "unreadable").sum()) if len(df) else 0
    print(f"{res['inputs']} crops listed; {res['written_now']} rows written now, {res['written_before']} before "
          f"({len(df)} under {a.out}, {err} of them unreadable files with their error) in {res['seconds']:.1f} s")
    print(RUO_STATEMENT)
    return 0
