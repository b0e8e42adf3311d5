"""Model bundles: a folder with ``weights.safetensors`` and ``bundle.json``.

``bundle.json`` is the model's contract (in the spirit of MONAI bundles): task, the exact
classes the model covers, backbone, data config, calibration temperature, test metrics with
the split they come from, how it was trained, library versions, the weights' sha256, intended
use and lineage. Its schema is ``bmcore.bundleschema`` (validated on load and before every write,
older bundles migrated in memory). Loading checks the hash before reading a byte of the weights
and reads safetensors only: nothing in a bundle is ever unpickled or executed.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import RUO_STATEMENT, __version__
from .backbones import get_backbone
from .bundleschema import SCHEMA_VERSION, BundleSpec, migrate, validate
from .ood import DEFAULT_CROP_SIDE, OOD_FILE, OODGate
from .preprocess import DataConfig
from .tasks import CELL_NAMES, get_task

if TYPE_CHECKING:  # reading a bundle and its gate needs no torch: the ONNX path runs without importing it
    import torch
    from torch import nn

BUNDLE_JSON = "bundle.json"
WEIGHTS_FILE = "weights.safetensors"


class BundleError(ValueError):
    """A bundle that cannot be trusted or read; the message says which and why."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_safetensors(path: Path, bundle_name: str, framework: str = "pt") -> dict:
    """Tensors of a safetensors file (a format that holds data only: reading it never executes anything), as torch
    tensors (``framework`` "pt") or numpy arrays ("np")."""
    if framework == "np":
        from safetensors.numpy import load_file
    else:
        from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors' own error type for a malformed header or truncated data
        raise BundleError(f"{bundle_name}: {path.name} is not a valid safetensors file ({exc}); refused") from None


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "bmcore": __version__}
    for pkg in ("torch", "torchvision", "timm", "safetensors", "numpy", "pillow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class Bundle:
    """A bundle folder and its ``bundle.json`` (``meta``, migrated to the current schema; ``spec``: the same,
    typed and validated)."""
    path: Path
    meta: dict
    spec: BundleSpec = field(init=False, repr=False)

    def __post_init__(self):
        try:
            self.meta = migrate(self.meta)
            self.spec = validate(self.meta, Path(self.path).name)
        except ValueError as exc:
            raise BundleError(str(exc)) from None

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def backbone(self) -> str:
        return self.meta["backbone"]

    @property
    def data_config(self) -> DataConfig:
        return DataConfig.from_dict(self.meta["data_config"])

    @property
    def temperature(self) -> float:
        return self.spec.calibration.temperature

    @property
    def tta(self) -> bool:
        return self.spec.inference.tta

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def crop_side(self) -> int:
        """Side in px of the crops the model was trained on (the longer side, median over the train split), stored
        when the gate is fitted (``bundle.json["ood"]["crop_side"]``; older bundles were trained on 250 px crops)."""
        return self.spec.ood.crop_side if self.spec.ood else DEFAULT_CROP_SIDE

    @property
    def lineage(self):
        """Where the bundle learnt from (``bmcore.bundleschema.Lineage``), or None for one trained by ``train``."""
        return self.spec.lineage

    @property
    def sha256(self) -> str:
        return self.meta["weights_sha256"]

    @property
    def task(self):
        return get_task(self.meta["task"])

    def missing_classes(self) -> list[str]:
        """Classes of the bundle's task the model does not cover (not in its training data)."""
        return [c for c in self.task.classes if c not in self.classes]

    def gate(self) -> OODGate | None:
        """The bundle's out-of-distribution and quality gate (``bmcore.ood``), or None if it has none.

        Its arrays are safetensors checked against ``bundle.json["ood"]["sha256"]``, like the weights.
        """
        info = self.meta.get("ood")
        if not info:
            return None
        f = self.path / self.spec.ood.file
        if self.spec.ood.file != OOD_FILE or not f.is_file():
            raise BundleError(f"{self.path.name}: the out-of-distribution gate file {OOD_FILE} is missing or renamed")
        if sha256_file(f) != self.spec.ood.sha256:
            raise BundleError(f"{self.path.name}: {OOD_FILE} does not match the sha256 in bundle.json; "
                              "the file was changed or corrupted")
        return OODGate.from_parts(_read_safetensors(f, self.path.name, "np"), info)

    def build_model(self) -> nn.Module:
        """Create the architecture and load the verified weights (CPU, eval mode)."""
        from .backbones import create

        model = create(self.backbone, len(self.classes), img_size=self.data_config.input_size,
                       **self.spec.model_kwargs)
        state = _read_safetensors(self.path / WEIGHTS_FILE, self.path.name)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BundleError(f"{self.path.name}: weights do not fit backbone {self.backbone!r}: {exc}") from None
        return model.eval()


def save_bundle(path: str | Path, model: nn.Module, *, task: str, classes: list[str], backbone: str,
                data_config: DataConfig, name: str | None = None, temperature: float = 1.0,
                extra: dict | None = None) -> Bundle:
    """Write ``model`` as a bundle folder at ``path`` and return it (weights stored as float32 safetensors)."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    get_task(task)
    get_backbone(backbone)
    unknown = [c for c in classes if c not in CELL_NAMES]
    if unknown:
        raise BundleError(f"unknown class codes {unknown}")
    m = model.module if hasattr(model, "module") else model
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in m.state_dict().items()
             if torch.is_floating_point(v)}
    state.update({k: v.detach().cpu().contiguous() for k, v in m.state_dict().items() if not torch.is_floating_point(v)})
    wfile = path / WEIGHTS_FILE
    save_file(state, str(wfile), metadata={"format": "pt"})
    meta = {
        "schema_version": SCHEMA_VERSION,
        "name": name or path.name,
        "task": task,
        "classes": list(classes),
        "class_names": {c: CELL_NAMES[c] for c in classes},
        "backbone": backbone,
        "timm_name": get_backbone(backbone).timm_name,
        "data_config": data_config.to_dict(),
        "calibration": {"temperature": float(temperature)},
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(wfile),
        "parameters": int(sum(p.numel() for p in m.parameters())),
        "versions": library_versions(),
        "intended_use": ("Research decision support: pre-classification of single-cell crops from "
                         "May-Grünwald-Giemsa/Pappenheim-stained bone marrow smears, for review by a "
                         "qualified morphologist."),
        "statement": RUO_STATEMENT,
    }
    meta.update(extra or {})
    b = Bundle(path, meta)  # validated before it is written
    (path / BUNDLE_JSON).write_text(json.dumps(b.meta, indent=2, sort_keys=False))
    return b


def update_bundle_meta(bundle: Bundle, **fields) -> Bundle:
    """Add or replace top-level fields of ``bundle.json`` (metrics, calibration, lineage) without touching the
    weights; the result is validated before it is written (a wrong field is refused by name, the file unchanged)."""
    new = Bundle(bundle.path, {**bundle.meta, **fields})
    (bundle.path / BUNDLE_JSON).write_text(json.dumps(new.meta, indent=2))
    bundle.meta, bundle.spec = new.meta, new.spec
    return bundle


def save_gate(bundle: Bundle, gate, **report) -> Bundle:
    """Store an ``OODGate`` in the bundle (arrays in ood.safetensors, settings + measured figures in bundle.json)."""
    from safetensors.torch import save_file

    f = bundle.path / OOD_FILE
    save_file(gate.tensors(), str(f))
    return update_bundle_meta(bundle, ood={"file": OOD_FILE, "sha256": sha256_file(f), **gate.settings(), **report})


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle folder; raises ``BundleError`` with a clear reason if it cannot be trusted."""
    path = Path(path)
    jf = path / BUNDLE_JSON
    if not jf.is_file():
        raise BundleError(f"{path}: not a model bundle (no {BUNDLE_JSON})")
    try:
        meta = json.loads(jf.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path.name}: {BUNDLE_JSON} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{path.name}: {BUNDLE_JSON} is not a JSON object")
    for key in ("task", "classes", "backbone", "data_config", "weights_file", "weights_sha256"):
        if key not in meta:
            raise BundleError(f"{path.name}: {BUNDLE_JSON} lacks {key!r}")
    if int(meta.get("schema_version", 1)) > SCHEMA_VERSION:
        raise BundleError(f"{path.name}: bundle schema version {meta['schema_version']} is newer than this app "
                          f"understands ({SCHEMA_VERSION}); update the app")
    if meta["weights_file"] != WEIGHTS_FILE or Path(meta["weights_file"]).suffix != ".safetensors":
        raise BundleError(f"{path.name}: weights must be {WEIGHTS_FILE} (safetensors); "
                          f"{meta['weights_file']!r} is refused, pickled checkpoints are never loaded")
    wfile = path / WEIGHTS_FILE
    if not wfile.is_file():
        raise BundleError(f"{path.name}: {WEIGHTS_FILE} is missing")
    digest = sha256_file(wfile)
    if digest != meta["weights_sha256"]:
        raise BundleError(f"{path.name}: weights sha256 {digest[:12]}… does not match bundle.json "
                          f"({str(meta['weights_sha256'])[:12]}…); the file was changed or corrupted")
    try:
        get_task(meta["task"])
        get_backbone(meta["backbone"])
    except ValueError as exc:
        raise BundleError(f"{path.name}: {exc}") from None
    return Bundle(path, meta)  # migrated and validated against the schema (BundleError naming the field)


def find_bundles(*folders: str | Path) -> list[Path]:
    """Bundle folders directly inside (or equal to) each of ``folders``, sorted by name."""
    found: list[Path] = []
    for folder in folders:
        if not folder:
            continue
        f = Path(folder)
        if (f / BUNDLE_JSON).is_file():
            found.append(f)
        elif f.is_dir():
            found.extend(sorted(p for p in f.iterdir() if (p / BUNDLE_JSON).is_file()))
    return found


def pick_default(paths: list[Path]) -> Path | None:
    """The bundle marked with a ``DEFAULT`` file, else the first one, else None."""
    marked = [p for p in paths if (Path(p) / "DEFAULT").exists()]
    return (marked or list(paths) or [None])[0]
