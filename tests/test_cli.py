import csv
import io
import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO


def test_classify_folder_and_zip_with_bad_files(tmp_path, crops, tiny_bundle):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in crops["EOS"][:3] + crops["NGS"][:2]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(crops["BLA"][0].read_bytes()[:500])
    zpath = tmp_path / "batch.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(crops["LYT"][0], "cells/" + crops["LYT"][0].name)
        z.writestr("../evil.jpg", b"x")
        z.writestr("inner.zip", b"PK")
    out = tmp_path / "cells.csv"
    heat = tmp_path / "heat"
    r = subprocess.run([sys.executable, "-m", "bmcore", "classify", str(folder), str(zpath), "--bundle",
                        str(tiny_bundle.path), "--out", str(out), "--heatmaps", str(heat)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 9
    ok = [x for x in rows if x["status"] == "ok"]
    bad = {x["file"]: x["error"] for x in rows if x["status"] == "error"}
    assert len(ok) == 6
    assert "corrupt or truncated" in bad["broken.jpg"]
    assert "unsafe path" in bad["batch.zip/../evil.jpg"] and "nested archive" in bad["batch.zip/inner.zip"]
    for x in ok:
        probs = [float(x[f"p_{c}"]) for c in tiny_bundle.classes]
        assert abs(sum(probs) - 1) < 1e-3 and x["predicted"] == tiny_bundle.classes[probs.index(max(probs))]
    assert len(list(heat.glob("*.png"))) == 6
    assert "skipped broken.jpg" in r.stderr
    assert "For research use only" in r.stdout
