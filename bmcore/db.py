"""What every table of the case database shares: the declarative base, the clock, the store's errors."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import DeclarativeBase


class CaseError(ValueError):
    """A request the store refuses (unknown case, sign-off not allowed...), with a readable reason."""


class ConflictError(CaseError):
    """Someone else changed the same record first. ``changed``: {cell id: its version now} of the cells that changed
    under the caller's page, where the refusal is about cells (a sign-off); empty otherwise."""

    def __init__(self, message: str, changed: dict[int, int] | None = None):
        super().__init__(message)
        self.changed = dict(changed or {})


class StoreError(CaseError):
    """The database refused or could not take a write (too long a value, server gone); nothing was saved."""


class PermissionDenied(CaseError):
    """The signed-in user's role does not allow this (checked by the store itself, whatever a page shows)."""


class AuthError(CaseError):
    """A sign-in or re-authentication was refused (wrong password, locked or disabled account...)."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


# ids are never reused after a deletion (SQLite would otherwise hand a deleted case's ids to the next one, and a stale
# screen of the deleted case could act on the new one's cells)
NO_REUSE = {"sqlite_autoincrement": True}
