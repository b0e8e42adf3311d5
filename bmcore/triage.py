"""Which cells a person must look at: the review ("triage") rules of a case.

A cell goes to review when the model is not sure enough of it (calibrated top-class confidence
under ``uncertain_below``) or when it may be a *critical* cell whatever its top class: its
calibrated probability of a critical class (blast; hairy cell with a model that knows them)
reaches that class's threshold. The thresholds of a bundle are chosen on its validation split
by ``python -m train.triage`` (goal: the cells left to bulk confirmation are at least 97%
correct; at least 95% of blasts sent to review) and stored in ``bundle.json["triage"]``; the
rules in force are stored with every case, so a case is always read with the rules it was
classified under. A bundle with no fitted rule gets built-in defaults: confidence under 0.50, and a blast class's
probability at 0.10 or more (never no blast rule).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .tasks import BLAST_CODES, HAIRY_CELL_CODE

DEFAULT_UNCERTAIN_BELOW = 0.5
DEFAULT_HAIRY_FLAG_AT = 0.5
# a model with no fitted rule still sends possible blasts to review: a low, conservative built-in threshold (the
# fitted ones of the bundled defaults: 0.097, then 0.124), never none
DEFAULT_BLAST_REVIEW_AT = 0.10


@dataclass(frozen=True)
class ReviewRules:
    uncertain_below: float = DEFAULT_UNCERTAIN_BELOW
    # class code -> calibrated probability at or above which the cell goes to review whatever its top class
    critical: dict[str, float] = field(default_factory=dict)
    hairy_flag_at: float | None = None  # None: the model has no hairy-cell class
    source: str = "built-in defaults (no triage fitted for this model)"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "ReviewRules":
        if not d:
            return cls()
        return cls(uncertain_below=float(d.get("uncertain_below", DEFAULT_UNCERTAIN_BELOW)),
                   critical={str(k): float(v) for k, v in (d.get("critical") or {}).items()},
                   hairy_flag_at=None if d.get("hairy_flag_at") is None else float(d["hairy_flag_at"]),
                   source=str(d.get("source", "")))

    def describe(self, source: bool = True) -> str:
        parts = [f"review when confidence < {self.uncertain_below:.2f}"]
        parts += [f"P({c}) ≥ {t:.2f}" for c, t in sorted(self.critical.items())]
        return "; ".join(parts) + (f". Rule {self.source}" if source and self.source else "")


def rules_for_model(meta: dict, classes: list[str], *, uncertain_below: float | None = None,
                    hairy_flag_at: float | None = None) -> ReviewRules:
    """The rules a new case classified by this bundle gets: the bundle's fitted triage, overridden where asked."""
    fitted = meta.get("triage") or {}
    base = ReviewRules.from_dict(fitted.get("rules")) if fitted.get("rules") else ReviewRules()
    critical = {c: t for c, t in base.critical.items() if c in classes}
    if not fitted.get("rules"):  # no fitted rule: possible blasts are reviewed all the same
        critical |= {c: DEFAULT_BLAST_REVIEW_AT for c in classes if c in BLAST_CODES}
    hac = None
    if HAIRY_CELL_CODE in classes:
        hac = hairy_flag_at if hairy_flag_at is not None else (base.hairy_flag_at or DEFAULT_HAIRY_FLAG_AT)
        critical[HAIRY_CELL_CODE] = hac  # a suspected hairy cell is reviewed whatever its top class
    source = base.source
    unc = base.uncertain_below
    if uncertain_below is not None and abs(uncertain_below - unc) > 1e-9:
        unc, source = uncertain_below, f"confidence threshold set by the user; {base.source}"
    return ReviewRules(uncertain_below=unc, critical=critical, hairy_flag_at=hac, source=source)


def judge(probabilities: dict[str, float], rules: ReviewRules) -> tuple[bool, list[str], bool]:
    """(uncertain, critical classes reached, hairy flag) for one cell's calibrated probabilities."""
    if not probabilities:
        return False, [], False
    conf = max(probabilities.values())
    critical = [c for c, t in sorted(rules.critical.items()) if probabilities.get(c, 0.0) >= t]
    hairy = rules.hairy_flag_at is not None and probabilities.get(HAIRY_CELL_CODE, 0.0) >= rules.hairy_flag_at
    return conf < rules.uncertain_below, critical, bool(hairy)


__all__ = ["ReviewRules", "rules_for_model", "judge", "BLAST_CODES", "DEFAULT_UNCERTAIN_BELOW"]
