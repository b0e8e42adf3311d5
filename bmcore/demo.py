"""The demo case: example images for someone without crops of their own (``assets/demo``, written by
``python -m train.make_demo``).

40 bone marrow crops of the project's test split (5 of each of the 8 classes the default model knows, under neutral
names) and two peripheral-blood smear fields of the BCCD dataset. A case opened from them is stored with
``Case.demo`` set: every page and export says it is a demo, and no figure of the lab's own work counts it
(``bmcore.agreement``).
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo"
MAX_BYTES = 2 * 2**20  # the whole demo folder, images and texts
DEMO_CODE_PREFIX = "DEMO-"
DEMO_NOTE = ("Demo case: example images from public datasets (bone marrow crops: Matek et al. 2021, TCIA, CC BY 4.0; "
             "smear fields: BCCD, MIT licence), not a patient's. It is never counted in the lab's figures.")


def manifest(root: Path = DEMO_DIR) -> dict | None:
    """What ``train.make_demo`` wrote (each file's source, split, class and sha256), or None if there is no demo."""
    p = root / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else None


def demo_uploads(root: Path = DEMO_DIR) -> list[tuple[str, bytes]]:
    """The demo case as uploads, (file name, bytes): the crops, then the smear fields."""
    m = manifest(root)
    if m is None:
        return []
    return [(Path(f["file"]).name, (root / f["file"]).read_bytes()) for f in m["crops"] + m["fields"]]


def demo_code(existing) -> str:
    """The first free demo case id ("DEMO-1", "DEMO-2"...), ``existing`` being the case ids in use."""
    taken = set(existing)
    n = 1
    while f"{DEMO_CODE_PREFIX}{n}" in taken:
        n += 1
    return f"{DEMO_CODE_PREFIX}{n}"
