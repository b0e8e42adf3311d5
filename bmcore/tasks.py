"""Cell-type codes, task definitions and lineage groups.

Codes and names follow the Matek et al. 2021 bone marrow cytomorphology dataset
(TCIA "Bone-Marrow-Cytomorphology_MLL_Helmholtz_Fraunhofer", 21 class folders).
"""

from __future__ import annotations

from dataclasses import dataclass

CELL_NAMES: dict[str, str] = {
    "ABE": "Abnormal eosinophil",
    "ART": "Artefact",
    "BAS": "Basophil",
    "BLA": "Blast",
    "EBO": "Erythroblast",
    "EOS": "Eosinophil",
    "FGC": "Faggot cell",
    "HAC": "Hairy cell",
    "KSC": "Smudge cell",
    "LYI": "Immature lymphocyte",
    "LYT": "Lymphocyte",
    "MMZ": "Metamyelocyte",
    "MON": "Monocyte",
    "MYB": "Myelocyte",
    "NGB": "Band neutrophil",
    "NGS": "Segmented neutrophil",
    "NIF": "Not identifiable",
    "OTH": "Other cell",
    "PEB": "Proerythroblast",
    "PLM": "Plasma cell",
    "PMO": "Promyelocyte",
}

# Codes that are not cells of the differential: excluded from its denominator.
NON_CELL_CODES: frozenset[str] = frozenset({"ART", "NIF", "KSC"})

# Lineage groups for the myeloid:erythroid (M:E) ratio. Granulocytic series from
# promyelocyte to segmented neutrophil plus eosinophils and basophils count as myeloid;
# blasts are not assigned a lineage (morphology alone cannot), monocytes are left out as
# is usual for the M:E ratio.
MYELOID_CODES: frozenset[str] = frozenset({"PMO", "MYB", "MMZ", "NGB", "NGS", "EOS", "ABE", "BAS", "FGC"})
ERYTHROID_CODES: frozenset[str] = frozenset({"PEB", "EBO"})
BLAST_CODES: frozenset[str] = frozenset({"BLA"})
HAIRY_CELL_CODE = "HAC"

# Classes a model is known to call a cell of a class it lacks (the morphologically nearest ones: a band is a
# segmented neutrophil not yet segmented, a myelocyte or metamyelocyte a promyelocyte a step on, erythroblasts and
# plasma cells round cells with a dense nucleus, a proerythroblast a large cell with fine chromatin). The review
# offers these first when the model named the key and does not know them (``bmcore.caserules.lacks_hint``);
# measured on real crops of the missing classes by bench/unknown_class_hints.py.
OFTEN_MISTAKEN_FOR: dict[str, tuple[str, ...]] = {
    "NGS": ("NGB",),
    "PMO": ("MYB", "MMZ"),
    "LYT": ("EBO", "PLM"),
    "NIF": ("EBO", "PLM"),
    "BLA": ("PEB",),
}

# A reviewer's mark, not a class: an image the model's gate would not judge, looked at by a person and dismissed as
# not a cell (a field, debris, a blurred or blank image). Stored as the cell's final label; never counted.
DISMISSED_CODE = "DIS"
DISMISSED_NAME = "Dismissed by a reviewer: not a cell"


@dataclass(frozen=True)
class Task:
    key: str
    title: str
    classes: tuple[str, ...]
    source: str

    def names(self) -> list[str]:
        return [CELL_NAMES[c] for c in self.classes]


TASKS: dict[str, Task] = {
    "bm14": Task(
        "bm14",
        "14 bone marrow cell classes",
        ("ART", "BLA", "EBO", "EOS", "LYT", "MMZ", "MON", "MYB", "NGB", "NGS", "NIF", "PEB", "PLM", "PMO"),
        "seeds 000/001",
    ),
    "hcl7": Task(
        "hcl7",
        "7 classes for hairy cell leukemia screening",
        ("HAC", "BAS", "MON", "LYT", "EOS", "NGS", "NGB"),
        "seed 003",
    ),
    "bm21": Task("bm21", "All 21 classes of the full dataset", tuple(sorted(CELL_NAMES)), "Matek et al. 2021"),
}


def get_task(key: str) -> Task:
    try:
        return TASKS[key]
    except KeyError:
        raise ValueError(f"unknown task {key!r}; known tasks: {', '.join(TASKS)}") from None


def cell_name(code: str) -> str:
    return DISMISSED_NAME if code == DISMISSED_CODE else CELL_NAMES.get(code, code)


def reviewer_labels() -> tuple[str, ...]:
    """Every label a reviewer may give a cell: each class of the full dataset (bm21: it holds every class of bm14 and
    hcl7), and the dismissed mark (for images the gate would not judge)."""
    return TASKS["bm21"].classes + (DISMISSED_CODE,)


def codes_text(codes) -> str:
    """Codes as a reader needs them: each with its name ("ABE abnormal eosinophil, FGC faggot cell")."""
    return ", ".join(f"{c} {cell_name(c).lower()}" for c in codes)


def glossary(codes) -> list[tuple[str, str]]:
    """(code, name) of each code given, in the order given, without repeats: the key printed beside any list of
    class codes."""
    seen: dict[str, str] = {}
    for c in codes:
        if c and c not in seen:
            seen[c] = cell_name(c)
    return list(seen.items())
