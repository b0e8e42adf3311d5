"""A case's stored facts in words: its status, who reviewed and signed it, how its model computed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .schema import JOB_FAILED, JOB_INTERRUPTED, JOB_LIVE, WHO_TYPED

if TYPE_CHECKING:
    from .schema import Case, Cell


def case_status_text(status: str, pending: int, cells: int, job_status: str | None, *, short: bool = False) -> str:
    """A case's status in the case lists: a case with cells not classified says how far it got and why it stopped
    ("open; classification interrupted: 128 of 500 files classified; upload the same files again to finish");
    ``short``: for a picker ("open, 128 of 500 classified, interrupted")."""
    done = cells - pending
    if not pending:
        return f"{status}, {cells} files" if short else status
    live = job_status in JOB_LIVE
    why = "classifying" if live else {JOB_INTERRUPTED: "interrupted", JOB_FAILED: "failed"}.get(job_status, "stopped")
    if short:
        return f"{status}, {done} of {cells} classified, {why}"
    if live:
        return f"{status}; classifying: {done} of {cells} files done"
    return (f"{status}; classification {why}{' (the server stopped)' if job_status == JOB_INTERRUPTED else ''}: "
            f"{done} of {cells} files classified; upload the same files again to finish")


def inference_text(case) -> str:
    """How the case's model computed, in words ("ONNX fp32, 4-view TTA"); "" when not recorded."""
    return (case.inference or {}).get("setting", "")


def who_text(who: str, kind: str) -> str:
    """A name as the audit trail shows it: typed names (from before accounts) are marked as never verified."""
    return f"{who} (typed name, not verified)" if kind == WHO_TYPED else who


def reviewer_text(cell: "Cell") -> str:
    """Who reviewed a cell; a name typed before accounts existed is marked as such."""
    if not cell.reviewed_by:
        return ""
    return cell.reviewed_by if cell.reviewed_by_id is not None else who_text(cell.reviewed_by, WHO_TYPED)


def signer_text(case: "Case") -> str:
    """Who signed a case: the signature's display name; a name typed before accounts existed is marked as such."""
    if case.signature:
        return case.signature.get("name") or case.signed_by or ""
    if case.signed_by and case.signed_by_id is None:
        return who_text(case.signed_by, WHO_TYPED)
    return case.signed_by or ""


def signature_text(sig: dict | None) -> str:
    if not sig:
        return ""
    return (f"signed by {sig['name']} (user {sig['username']}, id {sig['user_id']}, {sig['role']}) at {sig['at']}; "
            f"case version {sig['case_version']}, {sig['cells']} cells; model sha256 {sig['model_sha256'][:16]}…; "
            f"{sig['proof']}" + _attested_text(sig))


def _attested_text(sig: dict) -> str:
    """What the signer confirmed on purpose (signatures from before it was asked for say nothing)."""
    out = []
    if "no_specimen_id" in sig:
        out.append("signed without a specimen / accession number (confirmed by the signer)" if sig["no_specimen_id"]
                   else f"specimen / accession no. {sig.get('specimen_id')}")
    if "counted" in sig:
        out.append(f"{sig['counted']} of the target {sig['target']} cells counted"
                   + (" (under the target count, confirmed by the signer)" if sig.get("under_target") else ""))
    return ("; " + "; ".join(out)) if out else ""


def ranges_text(positions: list[int]) -> str:
    """1,2,3,5 -> "#1-3, #5"."""
    out, start, prev = [], None, None
    for p in sorted(positions) + [None]:
        if start is None:
            start = prev = p
        elif p is not None and p == prev + 1:
            prev = p
        else:
            out.append(f"#{start}" if start == prev else f"#{start}-{prev}")
            start = prev = p
    return ", ".join(out)
