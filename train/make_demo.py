"""Write the demo case under ``assets/demo/``: crops of the test split and two held-out smear fields.

    python -m train.make_demo                       # from ../shared/data; writes assets/demo/

The one exception to "no dataset image in the repository" (the README's "Demo case"): ``PER_CLASS`` crops of each
of the 8 classes, drawn with a fixed seed from the **test** split of ``train/splits/bm-dev_seed42.csv`` (never the
train or val split, so nothing the default model learnt from or was selected on), and two BCCD fields of the half
the field finder was never fitted on (``train.bccd.bccd_split``: "report"), each with two white cells. Files are
copied byte for byte under neutral names (``cell_01.jpg``...: a file name carrying the class would give the answer
away); ``manifest.json`` keeps each file's source, split, class and sha256, and ``ATTRIBUTION.md`` the licences.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd

from bmcore.demo import DEMO_DIR, MAX_BYTES
from train.bccd import bccd_split, read_voc

PER_CLASS = 5
FIELDS = ("BloodImage_00313", "BloodImage_00374")  # report half; two white cells each
ATTRIBUTION = """# Where the demo case's images come from

For research use only. Not for use in diagnostic procedures. These images are examples from public datasets, not a
patient's; a case opened from them is marked as a demo everywhere and never counted in the lab's figures.

- `crops/`: {n_crops} single-cell crops of bone marrow smears from **Matek C, Krappe S, Münzenmayer C, Haferlach T,
  Marr C. Highly accurate differentiation of bone marrow cell morphologies using deep neural networks on a large image
  data set. Blood 2021;138(20):1917-1927**, published as *Bone Marrow Cytomorphology (BM_cytomorphology_data)* on The
  Cancer Imaging Archive (TCIA), doi:10.7937/TCIA.AXH3-T579, under the Creative Commons Attribution 4.0 licence
  (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/). Copied unchanged; renamed (`manifest.json` gives each
  file's original name, class and sha256). Drawn from the project's test split only.
- `fields/`: two peripheral-blood smear fields of the **BCCD dataset** (Shenggan, https://github.com/Shenggan/BCCD_Dataset),
  MIT licence: Copyright (c) 2017 shenggan. Permission is hereby granted, free of charge, to any person obtaining a
  copy of this software and associated documentation files (the "Software"), to deal in the Software without
  restriction, including without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense,
  and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to
  the following conditions: The above copyright notice and this permission notice shall be included in all copies or
  substantial portions of the Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.
"""


def pick_crops(splits: pd.DataFrame, per_class: int = PER_CLASS, seed: int = 0) -> pd.DataFrame:
    """``per_class`` rows of each class of the test split, drawn with ``seed`` (stratified: every class alike)."""
    test = splits[splits.split == "test"]
    return (test.groupby("label", group_keys=False).sample(n=per_class, random_state=seed)
            .sort_values(["label", "path"]).reset_index(drop=True))


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="../shared/data/bm-dev", help="the crops' dataset root (class folders)")
    ap.add_argument("--splits", default="train/splits/bm-dev_seed42.csv", help="split CSV (path, label, sha256, split)")
    ap.add_argument("--bccd", default="../shared/data/fields/bccd", help="the BCCD fields (JPEGImages, Annotations)")
    ap.add_argument("--out", default=str(DEMO_DIR), help="where to write the demo case")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draw from the test split")
    a = ap.parse_args(argv)
    root, bccd, out = Path(a.root), Path(a.bccd), Path(a.out)
    picked = pick_crops(pd.read_csv(a.splits), seed=a.seed)
    report_half = set(bccd_split(bccd)["report"])
    if not set(FIELDS) <= report_half:
        raise SystemExit(f"the demo fields must come from the half the finder never saw: {sorted(set(FIELDS) - report_half)}")
    shutil.rmtree(out, ignore_errors=True)
    (out / "crops").mkdir(parents=True)
    (out / "fields").mkdir()
    order = picked.sample(frac=1.0, random_state=a.seed).reset_index(drop=True)  # classes mixed, as in a smear
    crops = []
    for i, row in order.iterrows():
        src = root / row.path
        if sha256(src) != row.sha256:
            raise SystemExit(f"{src}: its content is not the one the split file names")
        name = f"cell_{i + 1:02d}{src.suffix.lower()}"
        shutil.copyfile(src, out / "crops" / name)
        crops.append({"file": f"crops/{name}", "source": f"bm-dev/{row.path}", "label": row.label, "split": "test",
                      "sha256": row.sha256})
    fields = []
    for stem in FIELDS:
        src = bccd / "JPEGImages" / f"{stem}.jpg"
        shutil.copyfile(src, out / "fields" / src.name)
        fields.append({"file": f"fields/{src.name}", "source": f"fields/bccd/JPEGImages/{src.name}",
                       "white_cells": len(read_voc(bccd / "Annotations" / f"{stem}.xml").get("WBC", [])),
                       "half": "report (the field finder was never fitted on it)", "sha256": sha256(src)})
    manifest = {"command": "python -m train.make_demo", "splits": a.splits, "seed": a.seed, "per_class": PER_CLASS,
                "crops": crops, "fields": fields}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(n_crops=len(crops)))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(crops)} crops and {len(fields)} fields to {out}: {size / 2**20:.2f} MiB")
    if size > MAX_BYTES:
        raise SystemExit(f"the demo case is {size} bytes, over the {MAX_BYTES} allowed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
