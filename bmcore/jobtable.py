"""The jobs table: the state of background classification jobs (``bmcore.jobs`` runs them), kept in the store so
that a restarted server, or another replica, can tell a stopped job from a running one."""

from __future__ import annotations

from sqlalchemy import select

from .db import utcnow
from .schema import JOB_INTERRUPTED, JOB_LIVE, JOB_QUEUED, WHO_SYSTEM, AuditEvent, Job


class JobTable:
    """The store's job rows (mixed into ``bmcore.cases.CaseStore``: uses its ``session`` and ``_case``)."""

    def create_job(self, case_id: int, total: int, owner: str) -> int:
        with self.session() as s:
            self._case(s, case_id)
            job = Job(case_id=case_id, total=total, owner=owner[:200], status=JOB_QUEUED)
            s.add(job)
            s.flush()
            return job.id

    def set_job(self, job_id: int, status: str, error: str = "") -> None:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                job.status, job.heartbeat = status, utcnow()
                if error:
                    job.error = error

    def latest_job(self, case_id: int) -> dict | None:
        with self.session() as s:
            job = s.scalars(select(Job).where(Job.case_id == case_id).order_by(Job.id.desc())).first()
            return None if job is None else job_dict(job)

    def interrupt_jobs(self, is_alive) -> list[int]:
        """Mark queued/running jobs whose owner ``is_alive(owner, heartbeat)`` denies as interrupted; returns their ids."""
        out = []
        with self.session() as s:
            for job in s.scalars(select(Job).where(Job.status.in_(JOB_LIVE))):
                if not is_alive(job.owner, job.heartbeat):
                    job.status = JOB_INTERRUPTED
                    job.error = "the server stopped while this job ran"
                    out.append(job.id)
                    s.add(AuditEvent(case_id=job.case_id, who="(classifier)", who_kind=WHO_SYSTEM, action="interrupted",
                                     note=f"job {job.id}: {job.done} of {job.total} cells classified before the "
                                          "server stopped"))
        return out


def job_dict(job: "Job") -> dict:
    return {"id": job.id, "case_id": job.case_id, "status": job.status, "total": job.total, "done": job.done,
            "owner": job.owner, "created_at": job.created_at, "heartbeat": job.heartbeat, "error": job.error}
