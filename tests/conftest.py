"""Shared fixtures: real crops from ../shared/data (skipped with a reason where it is absent), tiny bundles."""

from __future__ import annotations

import contextlib
import os
import random
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BM_SHARED", REPO.parent / "shared"))
DEV = SHARED / "data" / "bm-dev"
DEV_CLASSES = ["ART", "BLA", "EOS", "LYT", "MON", "NGS", "NIF", "PMO"]

torch.set_num_threads(min(2, os.cpu_count() or 1))
# a page error fails its test (AppTest.exception) instead of becoming the "error id" message users see (app.py);
# tests/test_hostile_text.py checks that message with this unset
os.environ.setdefault("BM_PAGE_ERRORS", "raise")


def as_read(markdown_source: str) -> str:
    """Markdown source as its reader sees the text: CommonMark's backslash escapes and the invisible joiners that
    break bare-URL starts (``bmcore.text.md`` writes both) taken away."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown_source).replace("\u2060", "")


def _read_like_a_person() -> None:
    """AppTest hands back an element's Markdown source, in which pages escape user text (``bmcore.text.md``): tests
    read messages, captions and headings as a person reads them. The hostile-text tests read the source itself
    (``element.proto.body``) through a Markdown renderer."""
    from streamlit.testing.v1 import element_tree as et

    for cls in (et.AlertBase, et.Markdown, et.HeadingBase, et.Toast):
        cls.value = property(lambda self: as_read(self.proto.body))


_read_like_a_person()


def _need_data():
    if not DEV.is_dir():
        pytest.skip(f"real crops not found at {DEV} (../shared/data is absent on this machine)")


@pytest.fixture(scope="session")
def dev_root() -> Path:
    _need_data()
    return DEV


@pytest.fixture(scope="session")
def crops(dev_root) -> dict[str, list[Path]]:
    """A few real crop paths per class, deterministic."""
    out = {}
    for c in DEV_CLASSES:
        files = sorted((dev_root / c).glob("*.jpg"))
        out[c] = random.Random(0).sample(files, 6)
    return out


@pytest.fixture(scope="session")
def crop_path(crops) -> Path:
    return crops["BLA"][0]


def make_bundle(path: Path, classes: list[str], backbone: str = "small_cnn", size: int = 64, task: str = "bm14",
                seed: int = 0, temperature: float = 1.0):
    from bmcore.backbones import get_backbone
    from bmcore.bundle import save_bundle
    from bmcore.preprocess import DataConfig
    from bmcore.weights import build_pretrained

    torch.manual_seed(seed)
    spec = get_backbone(backbone)
    model, _ = build_pretrained(backbone, len(classes), "none", img_size=size)
    return save_bundle(path, model, task=task, classes=classes, backbone=backbone,
                       data_config=DataConfig(size, spec.mean, spec.std), temperature=temperature)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """An untrained small CNN over the 8 bm-dev classes: exercises the machinery, not accuracy."""
    return make_bundle(tmp_path_factory.mktemp("bundles") / "tiny", DEV_CLASSES)


TEST_PASSWORD = "test-password-1"


def actor(store, name: str = "amy", role: str = "admin"):
    """A signed-in user of ``store`` (created on first use, with ``TEST_PASSWORD``): what the store's changes need."""
    cache = store.__dict__.setdefault("_test_actors", {})
    if name not in cache:
        if name not in {u["username"] for u in store.list_users()}:
            store.add_user(name, role, TEST_PASSWORD)
        cache[name] = store.authenticate(name, TEST_PASSWORD)
    return cache[name]


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An app environment for AppTest: its own case database and two tiny bundles (8 classes; a hairy-cell task)."""
    db = f"sqlite:///{tmp_path / 'cases.db'}"
    monkeypatch.setenv("BM_DATABASE_URL", db)
    monkeypatch.setenv("BM_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("BM_APPROVED_DIR", str(tmp_path / "approved"))
    monkeypatch.setenv("BM_CANDIDATES_DIR", str(tmp_path / "candidates"))
    eight = make_bundle(tmp_path / "models" / "eight", DEV_CLASSES)
    hac = make_bundle(tmp_path / "models" / "hac", ["HAC", "LYT", "MON", "EOS", "NGS"], task="hcl7", seed=3)
    return {"db": db, "eight": str(eight.path), "hac": str(hac.path)}


def need_browser() -> None:
    """Skip (or, with BM_REQUIRE_E2E=1 as in CI, fail) where chromium or playwright is missing."""
    from bench import appdriver

    need_or_fail(appdriver.browser_missing())


def need_or_fail(why: str | None) -> None:
    """Skip for ``why`` (a tool this test needs is missing), or fail where CI's BM_REQUIRE_E2E=1 says it must run."""
    if why:
        if os.environ.get("BM_REQUIRE_E2E") == "1":
            pytest.fail(why)
        pytest.skip(why)


def pytest_configure(config):
    config.addinivalue_line("markers", "ray: needs the optional Ray install (make ray); CI installs it and runs them")


@contextlib.contextmanager
def postgres_schema():
    """A URL of the real PostgreSQL server of BM_TEST_POSTGRES_URL (.ci/run starts one and sets it) in a schema of
    its own, created now and dropped after (the tables of the database it points at are not touched). Skips without
    the variable, unless BM_REQUIRE_POSTGRES=1, where it fails."""
    base = os.environ.get("BM_TEST_POSTGRES_URL")
    if not base:
        why = ("BM_TEST_POSTGRES_URL is not set (e.g. postgresql+psycopg://bmtest:bmtest@127.0.0.1:5432/bmtest; "
               ".ci/run starts a server and sets it)")
        if os.environ.get("BM_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"BM_REQUIRE_POSTGRES=1 but {why}")
        pytest.skip(why)
    from bench.appdriver import fresh_schema

    with fresh_schema(base) as url:
        yield url
