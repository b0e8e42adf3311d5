#!/bin/sh
# One node of a Ray cluster for `python -m bmcore archive --ray ADDRESS` (docs/scaling.md), set up as the archive's
# workers need it: this checkout on PYTHONPATH, workers at nice 0 (Ray's default of 15 starves them beside any other
# work), and the `bmcore_env` resource that tells a job so (bmcore.archive.ENV_RESOURCE). A job on a cluster whose
# nodes all carry it starts its actors without a runtime environment, about 0.4 s sooner.
#
#   deploy/ray-node.sh --head --num-cpus 16              # the head node
#   deploy/ray-node.sh --address HEAD:6379 --num-cpus 16 # every other node (the same checkout at the same path)
#   .venv/bin/ray stop                                   # on each node, to stop it
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export RAY_worker_niceness=0
exec "${RAY:-$here/.venv/bin/ray}" start --resources '{"bmcore_env": 1}' "$@"
