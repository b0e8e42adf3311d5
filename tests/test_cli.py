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
    bad = {x["file"]: x["error"] for x in rows if x["status"] == "unreadable"}
    assert len(ok) == 6
    assert "corrupt or truncated" in bad["broken.jpg"]
    assert "unsafe path" in bad["batch.zip/../evil.jpg"] and "nested archive" in bad["batch.zip/inner.zip"]
    for x in ok:
        probs = [float(x[f"p_{c}"]) for c in tiny_bundle.classes]
        assert abs(sum(probs) - 1) < 1e-3 and x["predicted"] == tiny_bundle.classes[probs.index(max(probs))]
    assert len(list(heat.glob("*.png"))) == 6
    assert "skipped broken.jpg" in r.stderr
    assert "For research use only" in r.stdout


def test_batch_limit_refuses_extra_files_by_name(tmp_path, crops):
    from bmcore.inputs import from_paths, from_upload

    for p in crops["EOS"][:4]:
        shutil.copy(p, tmp_path / p.name)
    items = from_paths([tmp_path], max_files=3)
    assert [it.ok for it in items] == [True, True, True, False]
    assert "over the limit of 3" in items[-1].error and items[-1].name == sorted(p.name for p in crops["EOS"][:4])[-1]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/../../etc/passwd.jpg", b"x")
        z.writestr("__MACOSX/._a.jpg", b"x")
        z.writestr("notes.txt", b"hello")
        z.writestr("big.jpg", b"\0" * 3_000_000, compress_type=zipfile.ZIP_DEFLATED)  # ~1000x: a bomb
    got = {i.name: i.error for i in from_upload("case.zip", buf.getvalue())}
    assert "unsafe path" in got["case.zip/a/../../etc/passwd.jpg"]
    assert "not an image file type" in got["case.zip/notes.txt"]
    assert "ZIP bomb" in got["case.zip/big.jpg"]
    assert not any("__MACOSX" in k for k in got)


def test_agreement_on_the_command_line_counts_signed_lab_cases_only(tmp_path):
    """``python -m bmcore agreement``: the same figures as the page, for whoever runs commands on the server."""
    import json

    from bmcore.cases import CaseStore, CellInput
    from tests.test_app import _signed_case

    db = f"sqlite:///{tmp_path / 'c.db'}"
    store = CaseStore(db)
    _signed_case(store, "BM-1", [CellInput("a.jpg", True, predicted="LYT", confidence=0.99),
                                 CellInput("b.jpg", True, predicted="NGS", confidence=0.99)], {1: "NGB"})
    _signed_case(store, "DEMO-1", [CellInput("x.jpg", True, predicted="MON", confidence=0.99)], {}, demo=True)
    r = subprocess.run([sys.executable, "-m", "bmcore", "agreement", "--db", db], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "overall: 1 of 2 signed cells (50.0%" in r.stdout and "1 left out" in r.stdout
    assert "NGB: 1 signed cell; the model cannot name them" in r.stdout
    j = subprocess.run([sys.executable, "-m", "bmcore", "agreement", "--db", db, "--json"], capture_output=True,
                       text=True, check=True)
    fig = json.loads(j.stdout)
    assert (fig["cells"], fig["agree"], fig["demo_cases_left_out"], fig["unknown_to_model"]) == (2, 1, 1, {"NGB": 1})
