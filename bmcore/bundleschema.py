"""What ``bundle.json`` may hold: one typed schema (pydantic), validated when a bundle is loaded and before one is
written, so that a wrong or missing field is refused by name ("bundle.json field calibration.temperature: ...")
instead of failing later in whichever page reads it.

Sections the app reads are typed; what only people read (the training history, the ONNX export's figures) is kept
as it is. ``SCHEMA_VERSION`` counts the schema's changes; ``migrate`` brings an older bundle's dict up to it in
memory (the file is not rewritten). ``lineage`` records where a bundle learnt from: the bundle it was fine-tuned
from (name and weights sha256) and the data it saw (each source with its cell count per class and the sha256 of
its sorted crop hashes), so that a model learnt from a lab's signed cases can be traced to them.

Version history:
  1. the first bundles (no ``lineage``; gate sections without ``crop_side`` were trained on 250 px crops)
  2. ``lineage``; ``ood.crop_side`` always present; the schema is validated on load and on save
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import RUO_STATEMENT
from .ood import DEFAULT_CROP_SIDE
from .tasks import CELL_NAMES

SCHEMA_VERSION = 2
SHA256 = r"^[0-9a-f]{64}$"


class _Open(BaseModel):
    """A section whose fields beyond the typed ones are kept as they are."""
    model_config = ConfigDict(extra="allow")


class DataConfigSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_size: int = Field(gt=0, le=2048)
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    denoise_sharpen: bool = False
    interpolation: str = "bilinear"
    extra: dict = Field(default_factory=dict)

    @field_validator("std")
    @classmethod
    def _positive(cls, v):
        if any(x <= 0 for x in v):
            raise ValueError("every std must be above 0")
        return v


class CalibrationSpec(_Open):
    temperature: float = Field(default=1.0, gt=0)
    fitted_on: str = ""


class InferenceSpec(_Open):
    tta: bool = False
    engine: str | None = None
    precision: str | None = None


class OODSpec(_Open):
    file: str
    sha256: str = Field(pattern=SHA256)
    crop_side: int = Field(default=DEFAULT_CROP_SIDE, gt=0)


class MetricsSpec(_Open):
    split: str = Field(min_length=1)  # every figure says which data it comes from


class DataSource(BaseModel):
    """One body of data a bundle learnt from."""
    model_config = ConfigDict(extra="forbid")
    kind: Literal["signed-cases", "folder", "split"]
    description: str = Field(min_length=1)
    cells: int = Field(ge=0)
    classes: dict[str, int] = Field(default_factory=dict)
    sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")  # of the sorted crop sha256s, one per line


class Lineage(BaseModel):
    """Where a bundle came from: the bundle it was learnt from, how, and the data it saw."""
    model_config = ConfigDict(extra="forbid")
    parent_name: str = ""
    parent_sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    method: str = Field(min_length=1)
    learnt_at: str = Field(min_length=1)  # ISO 8601, UTC
    data: list[DataSource] = Field(default_factory=list)


class BundleSpec(_Open):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(min_length=1)
    task: str
    classes: list[str] = Field(min_length=2)
    class_names: dict[str, str] = Field(default_factory=dict)
    backbone: str
    timm_name: str = ""
    data_config: DataConfigSpec
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    weights_file: Literal["weights.safetensors"]
    weights_sha256: str = Field(pattern=SHA256)
    parameters: int | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    intended_use: str = ""
    statement: str = RUO_STATEMENT
    model_kwargs: dict = Field(default_factory=dict)
    classes_missing_from_task: list[str] = Field(default_factory=list)
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    metrics: MetricsSpec | None = None
    ood: OODSpec | None = None
    triage: dict | None = None
    training: dict | None = None
    onnx: dict | None = None
    lineage: Lineage | None = None

    @field_validator("classes")
    @classmethod
    def _known_unique(cls, v):
        unknown = [c for c in v if c not in CELL_NAMES]
        if unknown:
            raise ValueError(f"unknown class codes {unknown}")
        if len(set(v)) != len(v):
            raise ValueError("a class is listed twice")
        return v


def migrate(meta: dict) -> dict:
    """``meta`` (a bundle.json as read) brought up to ``SCHEMA_VERSION``; the dict given is not changed."""
    out = dict(meta)
    version = int(out.get("schema_version", 1))
    if version > SCHEMA_VERSION:
        raise ValueError(f"bundle schema version {version} is newer than this app understands ({SCHEMA_VERSION}); "
                         "update the app")
    if version < 2:
        if out.get("ood") and "crop_side" not in out["ood"]:
            out["ood"] = {**out["ood"], "crop_side": DEFAULT_CROP_SIDE}
        out["schema_version"] = 2
    return out


def validate(meta: dict, where: str) -> BundleSpec:
    """``meta`` as a ``BundleSpec``; raises ``ValueError`` naming ``where`` and the first wrong field(s)."""
    try:
        return BundleSpec.model_validate(meta)
    except ValidationError as exc:
        errs = exc.errors()
        said = "; ".join(f"field {'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in errs[:3])
        more = f" and {len(errs) - 3} more" if len(errs) > 3 else ""
        raise ValueError(f"{where}: bundle.json {said}{more}") from None
