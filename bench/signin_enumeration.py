"""Does sign-in tell an attacker whether an account exists? The same answer and the same delay, measured.

Through the store's ``authenticate`` (what the sign-in form calls, with the default policy: Argon2id, a pause of
0.5 s doubling to 4 s, a client refused after 5 failures of one name): 8 wrong passwords for a real account and 8
for a name no account has, each from its own client address, alternating. Each try's answer and wall time are
recorded; the figure is the largest difference between the two names' times at the same try, and whether any answer
differs. No timing is asserted anywhere (a shared machine is noisy); this script writes its figures.

    .venv/bin/python bench/signin_enumeration.py --out bench/results/signin_enumeration.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmcore.bench import cpu_model  # noqa: E402
from bmcore.cases import CaseStore  # noqa: E402
from bmcore.db import AuthError  # noqa: E402


def measure(tries: int = 8) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = CaseStore(f"sqlite:///{tmp}/auth.db")
        store.add_user("realuser", "pathologist", "the real password 1")
        out = {"realuser": [], "nosuchuser": []}
        clients = {"realuser": "192.0.2.10", "nosuchuser": "192.0.2.11"}
        for i in range(tries):
            for name in out:
                t = time.perf_counter()
                try:
                    store.authenticate(name, f"wrong guess {i}", client=clients[name])
                    said = "signed in"
                except AuthError as exc:
                    said = str(exc)
                out[name].append({"try": i + 1, "seconds": round(time.perf_counter() - t, 3), "answer": said})
        store.engine.dispose()
    diffs = [abs(a["seconds"] - b["seconds"]) for a, b in zip(out["realuser"], out["nosuchuser"])]
    return {
        "what": "8 wrong passwords for a real account and for an unknown name (own client each), alternating",
        "policy": "defaults: max 5 failures of a name per client, pause 0.5 s doubling to 4 s, Argon2id",
        "tries": out,
        "same_answers": [a["answer"] for a in out["realuser"]] == [b["answer"] for b in out["nosuchuser"]],
        "max_abs_diff_s": round(max(diffs), 3), "median_abs_diff_s": round(statistics.median(diffs), 3),
        "cpu": cpu_model(), "measured": time.strftime("%Y-%m-%d"),
        "command": "python bench/signin_enumeration.py --out bench/results/signin_enumeration.json",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tries", type=int, default=8, help="wrong passwords per name")
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    a = ap.parse_args(argv)
    r = measure(a.tries)
    for name, rows in r["tries"].items():
        print(f"{name:12s} " + " ".join(f"{x['seconds']:.2f}" for x in rows))
    print(f"same answers: {r['same_answers']}; largest difference at one try {r['max_abs_diff_s']} s, median "
          f"{r['median_abs_diff_s']} s")
    if a.out:
        a.out.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
