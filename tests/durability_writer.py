"""A case-store writer for tests/test_durability.py, run as its own process and killed with SIGKILL.

    python -m tests.durability_writer URL JOURNAL ROUND SEED

Forever: create a case (20-60 cells, one transaction) or review a random cell, and only after the
store call has returned (committed) append one line to JOURNAL and fsync it:

    case <case_code> <n_cells>
    review <cell_id> <label>

So every journal line names something the store reported as committed; at most the one commit in
flight when the process is killed is in the database without a journal line. Prints ``ready`` on
stdout once the store is open, so the parent times its kill from then.
"""

from __future__ import annotations

import os
import random
import sys

from sqlalchemy import select

from bmcore.cases import Cell, CaseStore, CellInput

LABELS = ["BLA", "EBO", "LYT", "NGS", "MON", "PMO"]
PASSWORD = "writer-password-1"


def signed_in(store: CaseStore, name: str):
    """The writer's account (created by the first round that needs it; a kill mid-creation leaves it whole or
    absent: one transaction)."""
    if name not in {u["username"] for u in store.list_users()}:
        store.add_user(name, "technologist", PASSWORD)
    return store.authenticate(name, PASSWORD)


def main(url: str, journal: str, rnd: int, seed: int) -> None:
    rng = random.Random(seed)
    store = CaseStore(url)
    with store.session() as s:  # cells committed by earlier rounds: reviewed too
        cell_ids = list(s.scalars(select(Cell.id).where(Cell.ok)))
    me = signed_in(store, f"writer{rnd}")
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(line: str) -> None:
        os.write(fd, (line + "\n").encode())  # one write() per line: no interleaving, no buffer
        os.fsync(fd)

    print("ready", flush=True)
    i = 0
    while True:
        if not cell_ids or rng.random() < 0.25:
            code = f"R{rnd}-C{i}"
            i += 1
            n = rng.randint(20, 60)
            cells = [CellInput(f"{code}-{k}.jpg", ok=k % 17 != 5, predicted=rng.choice(LABELS), confidence=0.5,
                               probabilities={"BLA": 0.5, "EBO": 0.5}, thumbnail=os.urandom(256))
                     for k in range(n)]
            cid = store.create_case(code, cells, actor=me, model_name="m")
            log(f"case {code} {n}")
            cell_ids.extend(c.id for c in store.get_case(cid).cells if c.ok)
        else:
            cell_id = rng.choice(cell_ids)
            label = rng.choice(LABELS)
            store.review_cell(cell_id, me, label)
            log(f"review {cell_id} {label}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
