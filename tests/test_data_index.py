import shutil

import pandas as pd
import pytest

from train.data import index_dataset, make_splits, read_known_bad


@pytest.fixture
def nested_root(tmp_path, crops):
    """The full dataset's layout: CLASS/0001-1000/CLASS_nnnnn.jpg, with a known-bad file and a duplicate."""
    root = tmp_path / "full"
    for c in ["BLA", "LYT", "EOS"]:
        d = root / c / "0001-1000"
        d.mkdir(parents=True)
        for i, p in enumerate(crops[c][:4]):
            shutil.copy(p, d / f"{c}_{i + 1:05d}.jpg")
    shutil.copy(crops["BLA"][0], root / "BLA" / "0001-1000" / "BLA_00099.jpg")  # byte-identical duplicate
    shutil.copy(crops["LYT"][5], root / "LYT" / "0001-1000" / "LYT_19975.jpg")  # stem in known_bad
    (root / "EOS" / "0001-1000" / "EOS_00077.jpg").write_bytes(b"not a jpeg")  # unreadable
    (root / "XYZ").mkdir()
    (root / "XYZ" / "notes.jpg").write_bytes(b"??")  # no class
    return root


def test_index_nested_layout(nested_root, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("LYT_19975\nNGS_04035\n")
    df, rep = index_dataset(nested_root, "bm14", read_known_bad(bad), progress=False)
    assert rep.counts == {"BLA": 4, "EOS": 4, "LYT": 4}
    assert rep.skipped_known_bad == ["LYT/0001-1000/LYT_19975.jpg"]
    assert [d for d, _ in rep.duplicates_dropped] == ["BLA/0001-1000/BLA_00099.jpg"]
    assert [p for p, _ in rep.unreadable] == ["EOS/0001-1000/EOS_00077.jpg"]
    assert rep.unlabelled == ["XYZ/notes.jpg"]
    assert "EBO" in rep.missing_task_classes and "BLA" not in rep.missing_task_classes
    assert df.sha256.is_unique and not df.path.str.startswith("/").any()


def test_index_task_filter(nested_root):
    df, rep = index_dataset(nested_root, "hcl7", progress=False)
    assert set(df.label) == {"LYT", "EOS"} and rep.outside_task == {"BLA": 5}
    assert "HAC" in rep.missing_task_classes


def test_flat_layout_and_real_known_bad(dev_root):
    bad = dev_root.parent / "known_bad.txt"
    assert "ART_07788" in read_known_bad(bad)


def test_splits_stratified_disjoint_reproducible():
    df = pd.DataFrame({"path": [f"{c}/{c}_{i}.jpg" for c in "ABCD" for i in range(40)],
                       "label": [c for c in "ABCD" for _ in range(40)], "sha256": range(160)})
    a, b = make_splits(df, seed=1), make_splits(df, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert set(a.split) == {"train", "val", "test"}
    assert a.groupby("path").split.nunique().max() == 1
    per = a.groupby(["split", "label"]).size().unstack()
    assert (per.loc["test"] == 6).all() and (per.loc["val"] == 6).all()
    assert not make_splits(df, seed=2).equals(a)


def test_committed_split_file_is_consistent(dev_root):
    from tests.conftest import REPO

    s = pd.read_csv(REPO / "train" / "splits" / "bm-dev_seed42.csv")
    assert len(s) == 5395 and s.path.is_unique and s.sha256.is_unique
    assert all((dev_root / p).is_file() for p in s.path.sample(50, random_state=0))
    assert s.groupby("split").size().to_dict() == {"test": 810, "train": 3775, "val": 810}
