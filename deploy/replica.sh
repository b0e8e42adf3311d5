#!/usr/bin/env bash
# One app replica on loopback: deploy/replica.sh PORT. Its settings come from the environment (systemd's
# EnvironmentFile=/etc/bmapp/replica.env, or the test): BM_DATABASE_URL (the shared PostgreSQL), BM_TRUST_PROXY=1,
# BM_CANDIDATES_DIR / BM_APPROVED_DIR (a folder every replica shares), PYTHON (default: the checkout's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BM_DATABASE_URL:?set BM_DATABASE_URL to the shared PostgreSQL (postgresql+psycopg://...)}"
export BM_TRUST_PROXY="${BM_TRUST_PROXY:-1}"
exec "${PYTHON:-.venv/bin/python}" -m streamlit run app.py --server.address 127.0.0.1 --server.port "${1:?port}" \
  --server.headless true --browser.gatherUsageStats false --server.fileWatcherType none
