"""Archive classification: the single-process CLI against ``python -m bmcore archive`` (plain and on Ray Data).

    .venv/bin/python bench/archive.py --crops 2000 --memory-crops 20000 --out bench/results/archive.json

On the same ``--crops`` real crops (a seeded sample of ../shared/data/bm-dev, every class), each run a fresh process
timed end to end (start-up included) and, for the archive runs, also in steady state (rows written after the first
shard, over the time from the first shard to the last, from the shards' modification times):

- ``classify``: ``python -m bmcore classify`` (one process, the app's data-parallel ONNX path, one CSV at the end);
- ``archive``: ``python -m bmcore archive`` without Ray (the same Classifier in-process, shards as it goes);
- ``archive_ray``: ``--ray`` on a local cluster of ``num_cpus=2`` (2 actors of 1 core, one-thread sessions);
- ``archive_ray_two_nodes``: a simulated two-node cluster (``ray.cluster_utils.Cluster``, two nodes of one CPU);
- ``resume``: a Ray run killed (SIGKILL to its process group) once half the crops are written, then rerun: the
  rerun's time, and whether every crop is written exactly once;
- ``memory``: peak resident memory of the whole process tree (driver, Ray's servers and workers) for the Ray run
  on ``--crops`` and on ``--memory-crops`` (the same crops listed over again through a file list);
- with ``--busy``: ``classify`` and ``archive_ray`` again beside a CPU-bound process pinned to one core.

Writes JSON; no figure is asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.load import RssSampler  # noqa: E402
from bmcore.bench import competing_process, cpu_model, write_result  # noqa: E402

PY = sys.executable
TWO_NODES = """
import sys, ray
from ray.cluster_utils import Cluster
from bmcore import archive
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
c.add_node(num_cpus=1)
ray.init(address=c.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": sys.argv[3]}})
print(archive.run([sys.argv[1]], sys.argv[2], sys.argv[4], ray_address=c.address, concurrency=2, progress=False))
ray.shutdown(); c.shutdown()
"""


def sample(root: Path, n: int, seed: int = 0) -> list[Path]:
    files = sorted(root.rglob("*.jpg"))
    return sorted(random.Random(seed).sample(files, min(n, len(files))))


def timed(cmd: list[str], env=None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    mem = RssSampler(proc.pid)
    mem.start()
    out, err = proc.communicate()
    mem.stop()
    s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {err[-2000:]}")
    return {"seconds": round(s, 2), "peak_rss_mib": round(mem.peak / 2 ** 20, 1), "stdout_tail": out[-300:]}


def steady(out: Path) -> float | None:
    """Crops per second from the first shard written to the last (start-up excluded)."""
    import pyarrow.parquet as pq

    shards = sorted(out.glob("*.parquet"), key=lambda f: f.stat().st_mtime)
    if len(shards) < 3:
        return None
    span = shards[-1].stat().st_mtime - shards[0].stat().st_mtime
    rows = sum(pq.read_metadata(f).num_rows for f in shards[1:])
    return round(rows / span, 1) if span > 0 else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "bm-dev"))
    ap.add_argument("--bundle", default=None, help="default: the bundled default model")
    ap.add_argument("--crops", type=int, default=2000)
    ap.add_argument("--memory-crops", type=int, default=20000, help="crops of the memory run (0: skip it)")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--busy", action="store_true", help="also beside a CPU-bound process on one core")
    ap.add_argument("--running-cluster", action="store_true",
                    help="only: the CLI, then --ray auto on a cluster started beforehand (deploy/ray-node.sh --head "
                         "--num-cpus 2), in turn; the job no longer pays for the cluster's start")
    ap.add_argument("--pairs", type=int, default=3, help="with --running-cluster: CLI/Ray pairs, in turn")
    ap.add_argument("--scale", type=int, default=0, metavar="N",
                    help="only: the CLI and --ray (a local cluster the job starts) on the same N distinct crops (at "
                         "most what --data-root holds), where the job's fixed costs are spread thinner")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from bmcore.cli import default_bundle

    bundle = a.bundle or str(default_bundle())
    files = sample(Path(a.data_root), a.crops)
    n = len(files)
    work = Path(tempfile.mkdtemp(prefix="bench_archive_"))
    folder = work / "crops"
    folder.mkdir()
    for f in files:
        (folder / f.name).symlink_to(f)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    arch = [PY, "-m", "bmcore", "archive", "--bundle", bundle, "--chunk", str(a.chunk)]
    res: dict = {"what": "archive classification: single-process CLI vs bmcore archive (plain, Ray)",
                 "data": f"{n} real crops sampled (seed 0) from {Path(a.data_root).name}", "machine": cpu_model(),
                 "cores": os.cpu_count(), "bundle": Path(bundle).name, "chunk": a.chunk, "runs": {}}

    def archive_run(name: str, extra: list[str], inputs: list[str] | None = None, crops: int = n) -> dict:
        out = work / name
        r = timed([*arch, *(inputs or [str(folder)]), "--out", str(out), *extra], env)
        r["crops"] = crops
        r["crops_per_s"] = round(r["crops"] / r["seconds"], 1)
        r["steady_crops_per_s"] = steady(out)
        res["runs"][name] = r
        print(name, r, flush=True)
        return r

    def classify_run(name: str) -> dict:
        r = timed([PY, "-m", "bmcore", "classify", str(folder), "--bundle", bundle, "--out", str(work / f"{name}.csv")],
                  env)
        r.update(crops=n, crops_per_s=round(n / r["seconds"], 1))
        res["runs"][name] = r
        print(name, r, flush=True)
        return r

    if a.running_cluster:
        return running_cluster(res, classify_run, archive_run, env, a.out, a.pairs, a.busy)
    if a.scale:
        # distinct crops only: the CLI classifies a repeated crop once (the same bytes, the same row), so repeats
        # would flatter it
        many = sample(Path(a.data_root), a.scale)
        big = work / "many"
        big.mkdir()
        for f in many:
            (big / f.name).symlink_to(f)
        res.update(what=f"the single-process CLI against bmcore archive --ray (local cluster) on {len(many)} crops",
                   data=f"{len(many)} distinct real crops sampled (seed 0) from {Path(a.data_root).name}")
        r = timed([PY, "-m", "bmcore", "classify", str(big), "--bundle", bundle, "--out", str(work / "many.csv")], env)
        r.update(crops=len(many), crops_per_s=round(len(many) / r["seconds"], 1))
        res["runs"]["classify_scale"] = r
        print("classify_scale", r, flush=True)
        archive_run("archive_ray_scale", ["--ray", "--concurrency", "2", "--num-cpus", "1"], [str(big)], len(many))
        res["ratios"] = {"ray_vs_cli_scale": round(res["runs"]["archive_ray_scale"]["crops_per_s"] /
                                                   r["crops_per_s"], 3)}
        return write_result(res, a.out)
    classify_run("classify")
    archive_run("archive", [])
    archive_run("archive_ray", ["--ray", "--concurrency", "2", "--num-cpus", "1"])
    t = timed([PY, "-c", TWO_NODES, str(folder), str(work / "two_nodes"), str(REPO), bundle], env)
    t.update(crops=n, crops_per_s=round(n / t["seconds"], 1), steady_crops_per_s=steady(work / "two_nodes"))
    res["runs"]["archive_ray_two_nodes"] = t
    print("two nodes", t, flush=True)

    # resume after a kill at half way
    out = work / "resume"
    cmd = [*arch, str(folder), "--out", str(out), "--ray", "--concurrency", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    while proc.poll() is None and time.perf_counter() - t0 < 1800:
        done = sum(pq.read_metadata(f).num_rows for f in out.glob("*.parquet")) if out.is_dir() else 0
        if done >= n // 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    subprocess.run([os.path.join(os.path.dirname(PY), "ray"), "stop", "--force"], capture_output=True)
    killed_at = sum(pq.read_metadata(f).num_rows for f in out.glob("*.parquet"))
    r = timed(cmd, env)
    from bmcore.archive import read_results

    df = read_results(out)
    res["runs"]["resume"] = {**r, "rows_when_killed": killed_at, "rows_after_rerun": len(df),
                             "unique_sources": int(df.source.nunique()), "every_crop_once": bool(
                                 len(df) == n and df.source.nunique() == n),
                             "full_run_seconds": res["runs"]["archive_ray"]["seconds"]}
    print("resume", res["runs"]["resume"], flush=True)

    if a.memory_crops:
        lst = work / "many.txt"
        items = (files * -(-a.memory_crops // n))[: a.memory_crops]
        lst.write_text("\n".join(map(str, items)) + "\n")
        archive_run("archive_ray_memory", ["--ray", "--concurrency", "2"], [str(lst)], len(items))
    if a.busy:
        with competing_process(0):
            classify_run("classify_busy")
            archive_run("archive_ray_busy", ["--ray", "--concurrency", "2", "--num-cpus", "1"])
    runs = res["runs"]
    base = runs["classify"]["crops_per_s"]
    res["ratios"] = {
        "ray_vs_cli_end_to_end": round(runs["archive_ray"]["crops_per_s"] / base, 3),
        "ray_steady_vs_cli_end_to_end": round((runs["archive_ray"]["steady_crops_per_s"] or 0) / base, 3),
        "archive_plain_vs_cli": round(runs["archive"]["crops_per_s"] / base, 3),
        "two_nodes_vs_cli": round(runs["archive_ray_two_nodes"]["crops_per_s"] / base, 3),
        **({"ray_vs_cli_busy": round(runs["archive_ray_busy"]["crops_per_s"] / runs["classify_busy"]["crops_per_s"],
                                     3)} if a.busy else {}),
        **({"memory_peak_20k_vs_2k": round(runs["archive_ray_memory"]["peak_rss_mib"] /
                                           runs["archive_ray"]["peak_rss_mib"], 3)} if a.memory_crops else {})}
    return write_result(res, a.out)


def running_cluster(res: dict, classify_run, archive_run, env: dict, out, pairs: int = 3, busy: bool = False) -> int:
    """The CLI and ``--ray auto`` on a cluster already running (as a research group's is), in turn: CLI, Ray, CLI,
    Ray; each Ray job still starts its own actors and ONNX sessions. The cluster's own start is timed apart. With
    ``busy``, the pairs run beside a CPU-bound process pinned to one core."""
    import contextlib

    ray_bin = os.path.join(os.path.dirname(PY), "ray")
    t0 = time.perf_counter()
    # the cluster as docs/scaling.md says to start one: deploy/ray-node.sh (PYTHONPATH, nice 0, bmcore_env)
    subprocess.run([str(REPO / "deploy" / "ray-node.sh"), "--head", "--num-cpus", "2", "--include-dashboard=false"],
                   env={**env, "RAY": ray_bin}, check=True, capture_output=True)
    res["cluster_start_seconds"] = round(time.perf_counter() - t0, 1)
    try:
        # the cluster's first Ray Data job also starts Ray Data's detached AutoscalingCoordinator actor, which every
        # later job on the cluster reuses: timed apart, as a one-time cost of the cluster
        archive_run("archive_ray_first_job", ["--ray", "auto", "--concurrency", "2", "--num-cpus", "1"])
        with competing_process(0) if busy else contextlib.nullcontext():
            for k in range(1, pairs + 1):
                classify_run(f"classify_{k}")
                archive_run(f"archive_ray_running_{k}", ["--ray", "auto", "--concurrency", "2", "--num-cpus", "1"])
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True)
    runs = res["runs"]
    res["what"] = ("the single-process CLI against bmcore archive --ray auto on a local cluster started beforehand "
                   "(after the cluster's first Ray Data job), in alternating pairs" +
                   (", beside a CPU-bound process pinned to one core" if busy else ""))
    ratios = {f"ray_running_vs_cli_{k}": round(runs[f"archive_ray_running_{k}"]["crops_per_s"] /
                                               runs[f"classify_{k}"]["crops_per_s"], 3) for k in range(1, pairs + 1)}
    import statistics

    res["ratios"] = {**ratios, "median": statistics.median(ratios.values()),
                     "first_job_vs_cli_1": round(runs["archive_ray_first_job"]["crops_per_s"] /
                                                 runs["classify_1"]["crops_per_s"], 3)}
    return write_result(res, out)


if __name__ == "__main__":
    sys.exit(main())
