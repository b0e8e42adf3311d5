"""User accounts, roles and sign-in, in the case database (SQLite or PostgreSQL, same store).

* Passwords are hashed with Argon2id (``argon2-cffi``'s ``PasswordHasher``, its memory-hard defaults); the
  plain password is never stored, logged or kept after the check.
* Roles, each one including the one before: ``student`` (takes the teaching quizzes, ``bmcore.quiz``, and reads
  no case at all), ``viewer`` (read), ``technologist`` (classify, review),
  ``pathologist`` (sign off, reopen), ``admin`` (delete cases, manage users). The store checks the role
  itself, read from the users table inside the same transaction as the change, so neither a page bug nor an
  out-of-date ``Actor`` can let a technologist sign off or a disabled account write anything.
* Failed sign-ins are slowed (a growing pause, the same for a real name and an unknown one) and throttled per
  client: after ``BM_LOGIN_MAX_FAILURES`` failures of one name from one client (or ``BM_LOGIN_CLIENT_MAX_FAILURES``
  of any names) in ``BM_LOGIN_LOCK_MINUTES``, that client is refused for the rest of the window; the account's
  owner elsewhere is not (``CaseStore.authenticate``). Every refusal gets one message. Every attempt is logged
  (``login_events`` table and the ``bmcore.auth`` logger) with the outcome and the client, a failure under a short
  hash of the name typed (never the text, never the password).
* Accounts from an identity provider (OIDC, through Streamlit's ``st.login``) are created on first sign-in,
  with the role mapped from a claim (e.g. ``groups``) on every sign-in; they have no password here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Boolean, DateTime, Integer, String, Text, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from .db import NO_REUSE, AuthError, Base, CaseError, ConflictError, PermissionDenied, utcnow

log = logging.getLogger("bmcore.auth")

STUDENT, VIEWER, TECHNOLOGIST, PATHOLOGIST, ADMIN = "student", "viewer", "technologist", "pathologist", "admin"
ROLES = (STUDENT, VIEWER, TECHNOLOGIST, PATHOLOGIST, ADMIN)  # each includes what the ones before it may do
# what each action needs (the lowest role allowed), and how to say it
NEEDS = {"view": VIEWER, "classify": TECHNOLOGIST, "review": TECHNOLOGIST, "sign": PATHOLOGIST,
         "reopen": PATHOLOGIST, "delete": ADMIN, "users": ADMIN, "agreement": PATHOLOGIST, "models": ADMIN,
         "quiz": STUDENT, "teach": PATHOLOGIST}
DOING = {"view": "reading cases", "classify": "classifying crops", "review": "reviewing cells",
         "sign": "signing a case off", "reopen": "reopening a signed case", "delete": "deleting a case",
         "users": "managing user accounts", "agreement": "reading the lab's agreement figures",
         "models": "approving or restoring a model", "quiz": "taking a quiz",
         "teach": "building quizzes and reading learners' results"}
USERNAME_MAX = 100
LOCAL, OIDC = "local", "oidc"


def allows(role: str, action: str) -> bool:
    """Whether ``role`` may do ``action`` (unknown roles and actions may do nothing)."""
    need = NEEDS.get(action)
    return need is not None and role in ROLES and ROLES.index(role) >= ROLES.index(need)


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


@dataclass(frozen=True)
class AuthPolicy:
    """Sign-in rules; each from an environment variable, with these defaults."""

    max_failures: int = 5          # BM_LOGIN_MAX_FAILURES: failures of one name from one client, then it is refused
    lock_minutes: float = 15.0     # BM_LOGIN_LOCK_MINUTES: the window failures are counted in (and a refusal lasts)
    slow_seconds: float = 0.5      # BM_LOGIN_SLOW_SECONDS: pause after the 1st failure, doubled each time, max 4 s
    idle_minutes: float = 30.0     # BM_SESSION_IDLE_MINUTES: a session without activity this long is signed out
    reauth_minutes: float = 5.0    # BM_REAUTH_MINUTES: an identity-provider sign-in this fresh may sign a case
    client_max_failures: int = 20  # BM_LOGIN_CLIENT_MAX_FAILURES: failures from one client (any names), then refused

    @classmethod
    def from_env(cls) -> "AuthPolicy":
        def num(name, default):
            try:
                return type(default)(os.environ.get(name, default))
            except ValueError:
                return default
        d = cls()
        return cls(num("BM_LOGIN_MAX_FAILURES", d.max_failures), num("BM_LOGIN_LOCK_MINUTES", d.lock_minutes),
                   num("BM_LOGIN_SLOW_SECONDS", d.slow_seconds), num("BM_SESSION_IDLE_MINUTES", d.idle_minutes),
                   num("BM_REAUTH_MINUTES", d.reauth_minutes),
                   num("BM_LOGIN_CLIENT_MAX_FAILURES", d.client_max_failures))

    def pause(self, failures: int) -> float:
        return 0.0 if failures <= 0 else min(4.0, self.slow_seconds * 2 ** (failures - 1))


_HASHER = None


def hasher():
    """The one Argon2id hasher (argon2-cffi's defaults: 64 MiB, 3 passes)."""
    global _HASHER
    if _HASHER is None:
        from argon2 import PasswordHasher

        _HASHER = PasswordHasher()
    return _HASHER


def hash_password(password: str) -> str:
    check_password_strength(password)
    return hasher().hash(password)


def check_password_strength(password: str) -> None:
    if len(password or "") < 10:
        raise CaseError("a password needs at least 10 characters")
    if len(password) > 1024:
        raise CaseError("a password has at most 1024 characters")


def verify_password(stored_hash: str | None, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    if not stored_hash:
        return False
    try:
        return hasher().verify(stored_hash, password or "")
    except (VerificationError, InvalidHashError):
        return False


class SetupToken:
    """The one-time secret that lets a browser create the first admin of an empty store, as Jupyter's token link
    does: made at random when the server finds no account, printed once on the server's console (never logged
    elsewhere), compared in constant time, and spent by the first account it makes."""

    def __init__(self) -> None:
        import secrets

        self._token = secrets.token_urlsafe(24)
        self._used = False
        self.lock = threading.Lock()

    @property
    def token(self) -> str:
        return self._token

    @property
    def used(self) -> bool:
        return self._used

    def matches(self, token: str) -> bool:
        import hmac

        return not self._used and hmac.compare_digest((token or "").encode(), self._token.encode())

    def use(self) -> None:
        self._used = True


def name_tag(username: str) -> str:
    """What the sign-in log keeps of a name typed into a failed sign-in: a short hash ("name#3f2a9c01d4"), never the
    text, so a password typed into the name box does not land in the log."""
    return "name#" + hashlib.sha256((username or "").encode()).hexdigest()[:10]


GENERIC_REFUSAL = ("wrong user name or password, or too many failed sign-ins from here; check both, or wait "
                   "{minutes:g} minutes and try again")

_DUMMY_HASH = None


def _burn(password: str) -> None:
    """Spend the time of a real check, so an unknown user name answers as slowly as a wrong password."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hasher().hash("not a real password, only for timing")
    verify_password(_DUMMY_HASH, password)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (NO_REUSE,)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), unique=True, index=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(20), default=VIEWER)
    source: Mapped[str] = mapped_column(String(10), default=LOCAL)
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    oidc_subject: Mapped[str | None] = mapped_column(String(400), nullable=True, unique=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # no longer read: failures are counted from login_events per name and client (CaseStore.authenticate); kept so
    # that databases from before keep their schema
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class LoginEvent(Base):
    """Every sign-in attempt and account change: who, when, what happened. Never a password."""

    __tablename__ = "login_events"
    __table_args__ = (NO_REUSE,)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX))
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    event: Mapped[str] = mapped_column(String(30))
    detail: Mapped[str] = mapped_column(Text, default="")
    # a short hash of the name as typed (every sign-in attempt: failures are counted by it, whether or not the
    # account exists) and the client's address as the proxy passed it; None on rows from before they were kept
    name_hash: Mapped[str | None] = mapped_column(String(20), nullable=True, index=True)
    client: Mapped[str | None] = mapped_column(String(100), nullable=True)


@dataclass(frozen=True)
class Actor:
    """A signed-in user, as ``authenticate``/``oidc_sign_in`` proved it. The store re-reads role and status from
    the users table on every change; the role here is for what pages show."""

    user_id: int
    username: str
    display_name: str
    role: str
    method: str  # "password" or "oidc"
    authenticated_at: dt.datetime

    def can(self, action: str) -> bool:
        return allows(self.role, action)

    @property
    def label(self) -> str:
        return self.username if not self.display_name or self.display_name == self.username else \
            f"{self.display_name} ({self.username})"


def _actor(u: User, method: str, at: dt.datetime | None = None) -> Actor:
    return Actor(u.id, u.username, u.display_name or u.username, u.role, method, at or utcnow())


def _clean_username(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise CaseError("a user name is required")
    if len(name) > USERNAME_MAX or any(ch.isspace() for ch in name):
        raise CaseError(f"a user name has 1 to {USERNAME_MAX} characters and no spaces")
    return name


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise CaseError(f"unknown role {role!r}; one of: {', '.join(ROLES)}")
    return role


class AccountsMixin:
    """User accounts and sign-in for ``CaseStore`` (needs its ``session()``)."""

    policy: AuthPolicy

    def _event(self, s: Session, username: str, event: str, user_id: int | None = None, detail: str = "", *,
               name_hash: str | None = None, client: str | None = None) -> None:
        s.add(LoginEvent(username=(username or "")[:USERNAME_MAX], user_id=user_id, event=event, detail=detail,
                         name_hash=name_hash, client=(client or None) and client[:100]))
        level = logging.WARNING if event.startswith(("failed", "locked", "refused")) else logging.INFO
        log.log(level, "auth %s user=%r %s%s", event, username, detail, f" client={client}" if client else "")

    # -- accounts --------------------------------------------------------------------------------------
    def has_users(self) -> bool:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(User).where(User.disabled.is_(False))) > 0

    def add_user(self, username: str, role: str, password: str, *, display_name: str = "",
                 by: Actor | None = None) -> int:
        """A local account. ``by``: the admin creating it (None from the command line on the server)."""
        username, role = _clean_username(username), _check_role(role)
        pw_hash = hash_password(password)
        try:
            with self.session() as s:
                if by is not None:
                    self._authorize(s, by, "users")
                if s.scalar(select(User.id).where(User.username == username)) is not None:
                    raise CaseError(f"user {username!r} already exists")
                u = User(username=username, display_name=(display_name or username).strip()[:200], role=role,
                         source=LOCAL, password_hash=pw_hash)
                s.add(u)
                s.flush()
                self._event(s, username, "account-created", u.id, f"role {role}" + _by(by))
                return u.id
        except IntegrityError:
            raise CaseError(f"user {username!r} already exists") from None

    def add_first_admin(self, username: str, password: str, *, display_name: str = "", setup: "SetupToken",
                        token: str) -> Actor:
        """The first account of an empty store, made in the browser by whoever holds the server's one-time setup
        token (``SetupToken``): an admin, signed in at once. Refused with a wrong or used token, and once any account
        exists (checked in the same transaction that adds it: two browsers racing make one admin)."""
        username = _clean_username(username)
        pw_hash = hash_password(password)
        with setup.lock:  # one browser at a time: two racing with the link make one admin
            if not setup.matches(token):
                raise AuthError("this setup link is not valid (or was used already); use the link the server printed")
            try:
                with self.session() as s:
                    if s.scalar(select(func.count()).select_from(User)):
                        raise AuthError("the first account exists already; sign in, or ask an admin for an account")
                    now = utcnow()
                    u = User(username=username, display_name=(display_name or username).strip()[:200], role=ADMIN,
                             source=LOCAL, password_hash=pw_hash, last_login_at=now, last_seen_at=now)
                    s.add(u)
                    s.flush()
                    self._event(s, username, "account-created", u.id, "role admin, the first account, through the "
                                "server's one-time setup link", name_hash=name_tag(username))
                    self._event(s, username, "ok-sign-in", u.id, "first account", name_hash=name_tag(username))
                    who = _actor(u, "password", now)
            except IntegrityError:
                raise AuthError("the first account exists already; sign in") from None
            setup.use()  # spent once the account is committed
            return who

    def list_users(self) -> list[dict]:
        with self.session() as s:
            return [{"id": u.id, "username": u.username, "name": u.display_name, "role": u.role, "source": u.source,
                     "disabled": u.disabled, "last_login": u.last_login_at, "created": u.created_at}
                    for u in s.scalars(select(User).order_by(User.username))]

    def update_user(self, username: str, *, role: str | None = None, disabled: bool | None = None,
                    password: str | None = None, by: Actor | None = None, expected: dict | None = None) -> None:
        """Change role, enable/disable, or reset the password (which also clears a lock).

        ``expected``: the account's {"role", "disabled"} as the caller's form showed them. If another admin changed
        them since, nothing is saved and a ConflictError says what the account is now: a stale form must not put
        back a role or status a colleague had just changed."""
        pw_hash = hash_password(password) if password is not None else None
        with self.session() as s:
            if by is not None:
                me = self._authorize(s, by, "users")
                if me.username == username and (disabled or (role is not None and role != ADMIN)):
                    raise CaseError("you cannot disable yourself or take away your own admin role")
            u = s.scalar(select(User).where(User.username == (username or "").strip()))
            if u is None:
                raise CaseError(f"no user {username!r}")
            if expected is not None and (expected.get("role"), bool(expected.get("disabled"))) != (u.role, u.disabled):
                last = s.scalars(select(LoginEvent).where(LoginEvent.user_id == u.id,
                                                          LoginEvent.event == "account-changed")
                                 .order_by(LoginEvent.id.desc()).limit(1)).first()
                raise ConflictError(
                    f"{u.username} was changed after your page showed it ({last.detail if last else 'changed'}): it is "
                    f"now {u.role}, {'disabled' if u.disabled else 'active'}. Nothing was saved; look again and "
                    "save again if your change still stands.")
            changes = []
            if role is not None and role != u.role:
                changes.append(f"role {u.role} -> {_check_role(role)}")
                u.role = role
            if disabled is not None and disabled != u.disabled:
                changes.append("disabled" if disabled else "enabled")
                u.disabled = disabled
            if pw_hash is not None:
                if u.source != LOCAL:
                    raise CaseError(f"{u.username} signs in through the identity provider and has no password here")
                u.password_hash, u.failed_logins, u.locked_until = pw_hash, 0, None
                changes.append("password reset")
                # failures of this name are counted from here on (``_failures``)
                self._event(s, username, "password-reset", u.id, _by(by).strip(), name_hash=name_tag(username))
            if changes:
                self._event(s, u.username, "account-changed", u.id, "; ".join(changes) + _by(by))

    # -- sign-in ---------------------------------------------------------------------------------------
    def authenticate(self, username: str, password: str, *, what: str = "sign-in", client: str = "") -> Actor:
        """The Actor for a correct user name and password; else ``AuthError``, one message for every refusal.

        What an attacker learns is the same for a real name and an unknown one: the same message, the same password
        hash's work (a dummy one for unknown names), the same pause (``AuthPolicy.pause`` of the failures of the name
        as typed, counted by its hash, in the last ``lock_minutes``). Throttling is per client (``client``: the
        source address as the proxy passes it): after ``max_failures`` failures of one name from one client, or
        ``client_max_failures`` of any names, that client is refused for the rest of the window, even with the right
        password; other clients, the account's owner among them, are not. So an attacker's failures slow the
        attacker and cannot shut a named user out. A failure is logged with the name's hash, never the text typed.
        Refusals are committed (the log rows they are counted from) before the error is raised."""
        username = (username or "").strip()[:USERNAME_MAX]
        now = utcnow()
        tag = name_tag(username)
        client = (client or "").strip()[:100]
        since = now - dt.timedelta(minutes=self.policy.lock_minutes)
        with self.session() as s:
            pair, by_name, by_client = self._failures(s, tag, client, since)
            u = s.scalar(select(User).where(User.username == username))
            throttled = pair >= self.policy.max_failures or (client and by_client >= self.policy.client_max_failures)
            logged = tag if what == "sign-in" else username  # a signature's name is the signed-in user's own
            if throttled:
                _burn(password)  # the work of a real check: a throttled answer takes as long as a wrong password
                self._event(s, logged, f"refused-{what}", None, "too many failed sign-ins from this client",
                            name_hash=tag, client=client)
            elif u is None or u.source != LOCAL:
                _burn(password)
                self._event(s, logged, f"failed-{what}", None, "no such local account", name_hash=tag,
                            client=client)
            elif not verify_password(u.password_hash, password):
                self._event(s, logged, f"failed-{what}", None, "wrong password", name_hash=tag, client=client)
            elif u.disabled:  # the right password: only its holder learns the account is disabled
                self._event(s, username, f"refused-{what}", u.id, "account disabled", name_hash=tag, client=client)
                raise AuthError("this account is disabled; ask an admin")
            else:
                u.failed_logins, u.locked_until = 0, None
                if what == "sign-in":
                    u.last_login_at = u.last_seen_at = now
                if hasher().check_needs_rehash(u.password_hash):
                    u.password_hash = hasher().hash(password)
                self._event(s, username, f"ok-{what}", u.id, name_hash=tag, client=client)
                return _actor(u, "password", now)
        # outside the transaction (a slow answer holds no lock); the same schedule for every name
        time.sleep(self.policy.pause(max(by_name, by_client if client else 0) + 1))
        raise AuthError(GENERIC_REFUSAL.format(minutes=self.policy.lock_minutes))

    @staticmethod
    def _failures(s: Session, tag: str, client: str, since: dt.datetime) -> tuple[int, int, int]:
        """Failed attempts in the window: (this name from this client, this name from anywhere, this client with any
        name). A name's counts restart at a password reset, and at a successful sign-in (from anywhere for the name's
        count, from this client for the pair's: the owner signing in elsewhere does not clear an attacker's count)."""
        fail = LoginEvent.event.like("failed-%") | LoginEvent.event.like("refused-%")
        ok = LoginEvent.event.in_(("ok-sign-in", "ok-signature"))
        reset = s.scalar(select(func.max(LoginEvent.at)).where(LoginEvent.name_hash == tag,
                                                                LoginEvent.event == "password-reset"))
        ok_any = s.scalar(select(func.max(LoginEvent.at)).where(LoginEvent.name_hash == tag, ok))
        ok_here = s.scalar(select(func.max(LoginEvent.at)).where(LoginEvent.name_hash == tag, ok,
                                                                  LoginEvent.client == client)) if client else ok_any

        def count(start, *where) -> int:
            return s.scalar(select(func.count()).select_from(LoginEvent).where(fail, LoginEvent.at > start, *where)) or 0

        name_start = max(t for t in (since, reset, ok_any) if t is not None)
        pair_start = max(t for t in (since, reset, ok_here) if t is not None)
        by_name = count(name_start, LoginEvent.name_hash == tag)
        pair = count(pair_start, LoginEvent.name_hash == tag, *([LoginEvent.client == client] if client else []))
        by_client = count(since, LoginEvent.client == client) if client else 0
        return pair, by_name, by_client

    def oidc_sign_in(self, claims: dict, *, role_claim: str = "groups", role_map: dict | None = None,
                     idle_minutes: float | None = None) -> Actor:
        """The Actor for an identity-provider sign-in (claims of its ID token, as ``st.user`` shows them).

        The account is created on first sign-in; its role is taken from ``claims[role_claim]`` through
        ``role_map`` ({claim value: role}, the highest wins) on every sign-in. No mapped role: refused.
        ``idle_minutes``: a browser coming back with an identity cookie older than that, for an account not active
        for that long either, is refused ("session expired"): it must sign in at the provider again."""
        sub, iss = str(claims.get("sub") or ""), str(claims.get("iss") or "")
        if not sub:
            raise AuthError("the identity provider sent no subject (sub)")
        subject = f"{iss}|{sub}"[:400]
        username = str(claims.get("preferred_username") or claims.get("email") or sub).strip()[:USERNAME_MAX]
        values = claims.get(role_claim) or []
        values = [values] if isinstance(values, str) else list(values)
        roles = [(role_map or {}).get(str(v)) for v in values]
        roles = [r for r in roles if r in ROLES]
        at = claims.get("iat")
        at = dt.datetime.fromtimestamp(int(at), dt.timezone.utc).replace(tzinfo=None) if at else utcnow()
        refusal = None
        try:
            with self.session() as s:
                u = s.scalar(select(User).where(User.oidc_subject == subject))
                if not roles:
                    self._event(s, username, "refused-sign-in", u.id if u else None,
                                f"identity provider: no role mapped from claim {role_claim!r} ({values})")
                    refusal = PermissionDenied(f"{username} has no role in this app (the identity provider's "
                                               f"{role_claim!r} claim maps to none); ask your admin")
                elif u is None and s.scalar(select(User.id).where(User.username == username)) is not None:
                    self._event(s, username, "refused-sign-in", None, "identity provider: name taken by a local account")
                    refusal = AuthError(f"a local account is already called {username!r}; ask an admin to rename one "
                                        "of them")
                elif u is not None and u.disabled:
                    self._event(s, username, "refused-sign-in", u.id, "account disabled")
                    refusal = AuthError("this account is disabled here; ask an admin")
                elif u is not None and idle_minutes is not None and _older(at, idle_minutes) and \
                        _older(u.last_seen_at, idle_minutes):
                    self._event(s, username, "refused-sign-in", u.id, f"session idle for over {idle_minutes:g} min")
                    refusal = AuthError(f"your session expired after {idle_minutes:g} minutes without activity; "
                                        "sign in again")
                else:
                    role = max(roles, key=ROLES.index)
                    if u is None:
                        u = User(username=username, source=OIDC, oidc_subject=subject, role=role)
                        s.add(u)
                        s.flush()
                        self._event(s, username, "account-created", u.id, f"identity provider, role {role}")
                    if u.role != role:
                        self._event(s, username, "account-changed", u.id,
                                    f"role {u.role} -> {role} (identity provider)")
                        u.role = role
                    u.display_name = str(claims.get("name") or username)[:200]
                    u.last_login_at = u.last_seen_at = utcnow()
                    self._event(s, username, "ok-sign-in", u.id, "identity provider")
                    return _actor(u, "oidc", at)
        except IntegrityError:
            raise AuthError("this account was created by another sign-in at the same moment; try again") from None
        raise refusal

    def refresh_actor(self, actor: Actor, *, touch: bool = True) -> Actor:
        """The same user as the users table says now (role changes apply at once); ``AuthError`` if disabled or
        gone. ``touch`` records activity (for idle expiry across browser sessions)."""
        with self.session() as s:
            u = s.get(User, actor.user_id)
            if u is None or u.disabled:
                raise AuthError("this account was disabled; ask an admin")
            if touch and _older(u.last_seen_at, 1):  # at most one write a minute per user
                u.last_seen_at = utcnow()
            return Actor(u.id, u.username, u.display_name or u.username, u.role, actor.method, actor.authenticated_at)

    def record_logout(self, actor: Actor, why: str = "signed out") -> None:
        with self.session() as s:
            self._event(s, actor.username, "sign-out", actor.user_id, why)

    def login_events(self, limit: int = 200) -> list[dict]:
        with self.session() as s:
            return [{"at": e.at, "user": e.username, "event": e.event, "detail": e.detail}
                    for e in s.scalars(select(LoginEvent).order_by(LoginEvent.id.desc()).limit(limit))]

    # -- the store's own check -------------------------------------------------------------------------
    def _authorize(self, s: Session, actor, action: str) -> User:
        """The actor's user row, if it exists, is enabled and its role (as stored now) allows ``action``."""
        if not isinstance(actor, Actor):
            raise PermissionDenied(f"{DOING[action]} needs a signed-in user")
        u = s.get(User, actor.user_id)
        if u is None or u.disabled:
            raise PermissionDenied(f"{actor.username}'s account is disabled; nothing was saved")
        if not allows(u.role, action):
            raise PermissionDenied(f"{DOING[action]} needs the {NEEDS[action]} role; {u.username} is "
                                   f"{_article(u.role)}; nothing was saved")
        return u

    def _signature_proof(self, actor: Actor, password: str | None) -> str:
        """Re-authentication for a signature: the password again (local accounts, counted like a sign-in), or an
        identity-provider sign-in no older than ``policy.reauth_minutes``. Returns how it was proven."""
        if actor.method == "oidc":
            age = (utcnow() - actor.authenticated_at).total_seconds() / 60
            if age > self.policy.reauth_minutes:
                raise AuthError(f"to sign, sign in again with your identity provider (your sign-in is {age:.0f} "
                                f"minutes old; a signature needs one from the last {self.policy.reauth_minutes:g})")
            return "identity provider sign-in at " + f"{actor.authenticated_at:%Y-%m-%d %H:%M:%S} UTC"
        if not password:
            raise AuthError("enter your password to sign")
        proven = self.authenticate(actor.username, password, what="signature")
        if proven.user_id != actor.user_id:
            raise AuthError("the password is not the signed-in user's")
        return "password re-entered"


def _older(t: dt.datetime | None, minutes: float) -> bool:
    return t is None or (utcnow() - t).total_seconds() > minutes * 60


def _by(by: Actor | None) -> str:
    return f" by {by.username}" if by is not None else " from the server's command line"


__all__ = ["Actor", "AuthPolicy", "AccountsMixin", "SetupToken", "User", "LoginEvent", "ROLES", "STUDENT", "VIEWER", "TECHNOLOGIST",
           "PATHOLOGIST", "ADMIN", "allows", "hash_password", "verify_password"]
