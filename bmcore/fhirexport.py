"""The case's differential as FHIR R4 JSON for a laboratory information system: one DiagnosticReport with contained
Observations (one per counted cell type's percentage, the number of cells counted, the M:E ratio where defined) and
the Specimen the lab described.

Codes: no LOINC code is used. Bone marrow differential codes in LOINC exist, but which of them a lab's LIS maps
these particular counts to (this model's classes, its exclusions) is the lab's decision, so every code here is from a
local code system, ``LOCAL_SYSTEM``, which a lab maps on import. The category is HL7's v2-0074 "HM" (haematology),
units are UCUM. The report is "preliminary" until the case is signed off, "final" after.
"""

from __future__ import annotations

import datetime as dt
import json

from . import RUO_STATEMENT
from .casetext import signer_text
from .report import PRELIMINARY, build_report, model_text

LOCAL_SYSTEM = "urn:bmcore:fhir:CodeSystem:bm-differential"  # local codes: not LOINC, map them in the LIS
CASE_ID_SYSTEM = "urn:bmcore:case-id"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def _local(code: str, display: str) -> dict:
    return {"coding": [{"system": LOCAL_SYSTEM, "code": code, "display": display}], "text": display}


def _instant(t: dt.datetime) -> str:
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).isoformat(timespec="seconds")


def _pct(v: float) -> dict:
    return {"value": round(v, 1), "unit": "%", "system": UCUM, "code": "%"}


def fhir_report(case, model_meta: dict | None = None, audit: list[dict] | None = None,
                users: list[dict] | None = None) -> dict:
    """The DiagnosticReport (a dict, FHIR R4 JSON) of one case."""
    r = build_report(case, model_meta, audit, users)
    d = r.d
    status = "final" if r.signed else "preliminary"
    when = _instant(case.signed_at if r.signed and case.signed_at else case.created_at)
    category = [{"coding": [{"system": V2_0074, "code": "HM", "display": "Hematology"}]}]
    performer = [{"display": signer_text(case)}] if r.signed else []
    base = {"resourceType": "Observation", "status": status, "category": category, "effectiveDateTime": when,
            "specimen": {"reference": "#specimen"}}
    if performer:
        base["performer"] = performer
    obs = []
    for t in d.table():
        o = dict(base, id=f"pct-{t['class']}", code=_local(f"{t['class']}-pct", f"{t['name']} / 100 counted cells"),
                 note=[{"text": f"{t['count']} of {d.denominator} counted cells"}])
        if (rng := d.percent_range(t["class"])) is not None:  # cells are pending: the range it can still take
            o["valueRange"] = {"low": _pct(rng[0]), "high": _pct(rng[1])}
            o["note"].append({"text": r.pending_text})
        else:
            o["valueQuantity"] = _pct(t["percent"])
        if t["class"] == "BLA":
            o["note"].append({"text": "Blasts: " + r.blast_text})
        obs.append(o)
    obs.append(dict(base, id="counted", code=_local("cells-counted", "Cells counted in the differential"),
                    valueQuantity={"value": d.denominator, "unit": "cells", "system": UCUM, "code": "{cells}"},
                    note=[{"text": "Left out of the denominator: " + (
                        ", ".join(f"{k}: {v}" for k, v in d.excluded.items()) or "none") + ". " + r.progress_text
                        + (". " + r.pending_text if r.pending_text else "") + ". " + r.rejected_text}]))
    me = dict(base, id="me-ratio", code=_local("ME-ratio", "Myeloid:erythroid ratio"), note=[{"text": r.me_text}])
    if d.me_ratio is not None:
        me["valueQuantity"] = {"value": round(d.me_ratio, 2), "unit": "{ratio}", "system": UCUM, "code": "{ratio}"}
    else:
        me["dataAbsentReason"] = {"text": d.me_note}
    obs.append(me)
    spec = {"resourceType": "Specimen", "id": "specimen"}
    details = {k: v for k, v in (case.specimen or {}).items() if v}
    if details.get("specimen_id"):
        spec["accessionIdentifier"] = {"value": details["specimen_id"]}
    if details.get("site"):
        spec["type"] = {"text": details["site"]}
    if details.get("collected"):
        spec["collection"] = {"collectedDateTime": details["collected"]}
    if details.get("stain"):
        spec["note"] = [{"text": f"Stain: {details['stain']}"}]
    report = {
        "resourceType": "DiagnosticReport", "id": f"bm-{case.id}",
        "contained": [spec, *obs],
        "identifier": [{"system": CASE_ID_SYSTEM, "value": case.case_code}],
        "status": status, "category": category,
        "code": _local("bm-differential", "Bone marrow differential count (digital morphology)"),
        "effectiveDateTime": _instant(case.created_at), "issued": when,
        "specimen": [{"reference": "#specimen"}],
        "result": [{"reference": f"#{o['id']}"} for o in obs],
        "conclusion": " ".join(filter(None, [
            RUO_STATEMENT, r.demo_text, "" if r.signed else PRELIMINARY + ".", r.status_line + ".",
            f"{d.denominator} cells counted.", "Hairy cells: " + r.hairy.text, "Model: " + model_text(r)])),
    }
    if performer:
        report["resultsInterpreter"] = performer
    if r.demo_text:  # HL7's own mark for test data, read by any receiving system
        report["meta"] = {"security": [{"system": ACT_REASON, "code": "HTEST", "display": "test health data"}]}
    return report


def fhir_json(case, model_meta: dict | None = None, audit: list[dict] | None = None,
              users: list[dict] | None = None) -> str:
    return json.dumps(fhir_report(case, model_meta, audit, users), indent=2, ensure_ascii=False)
