"""Who may use the dashboard, and as what: users, roles, passwords and sign-in sessions.

No Streamlit here: the dashboard's sign-in page and session check (``ui/server.py``,
``ui/auth.py``) and the ``outbox-admin hash-password`` command use it.

**Who is acting**, decided per request, in this order:

1. A trusted reverse-proxy header, ``OUTBOX_DASHBOARD_USER_HEADER`` (e.g. ``X-Forwarded-User``),
   off by default. Enable it only behind a proxy that authenticates people, sets the header
   itself and removes it from every client request (page loads and the WebSocket alike):
   anyone who reaches the dashboard directly could otherwise name themselves.
2. A sign-in session: a cookie the sign-in page sets after a password check, signed (HMAC,
   itsdangerous) with ``OUTBOX_DASHBOARD_SECRET`` and expiring after
   ``OUTBOX_DASHBOARD_SESSION_HOURS`` (12). Passwords: the shared ``OUTBOX_DASHBOARD_PASSWORD``
   (the name typed with it is who acts, ``operator`` when left empty), and personal ones as
   scrypt hashes in the ``[dashboard.users]`` table of ``outbox.toml``; a name with a personal
   password signs in only with that one.
3. None of them configured: the dashboard is open, and everyone is the user ``dashboard``.

**Why a signed cookie and not ``st.login``.** ``st.login`` needs an OpenID Connect provider
(client id and secret, a redirect URL, ``[auth]`` in ``secrets.toml``), which a console next to a
database often does not have, and the shared password has to keep working. Streamlit has no API
to set a cookie from a page (``st.context.cookies`` only reads), so the cookie is set by an HTTP
route of the ``st.App`` that ``dashboard.py`` defines; the same app refuses every other request
without a session, downloads (``/media/...``) included. Single sign-on still works: put an
OIDC proxy (oauth2-proxy, a cloud load balancer) in front and name its header in
``OUTBOX_DASHBOARD_USER_HEADER``.

**The secret.** Without ``OUTBOX_DASHBOARD_SECRET`` a random key is made per server process: sign-ins
end when the dashboard restarts, and nothing is written to disk (read-only mode writes no
file). Several processes behind one address need the same secret. Changing the secret, or a
password, ends the sessions it signed.

**Roles.** ``operator`` may act (publish, requeue, discard, run the dispatcher); ``viewer``
sees what read-only mode shows. ``OUTBOX_DASHBOARD_OPERATORS`` / ``OUTBOX_DASHBOARD_VIEWERS``
(comma-separated) and ``operators`` / ``viewers`` in ``[dashboard]`` name users; everyone
else gets ``OUTBOX_DASHBOARD_DEFAULT_ROLE`` / ``default_role``, by default ``viewer`` as soon
as any operator is named (naming operators means the others are not) and ``operator``
otherwise (one shared password keeps meaning full access, as before).
"""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .handlers.config import DASHBOARD_KEYS, read_config

log = logging.getLogger(__name__)

SESSION_COOKIE = "outbox_dashboard_session"
OPEN_USER = "dashboard"  # who acts on an open dashboard (no password, no header)
SHARED_PASSWORD_USER = "operator"  # the name of a shared-password sign-in that typed none
DEFAULT_SESSION_HOURS = 12.0
MAX_NAME_LENGTH = 100
MIN_SECRET_LENGTH = 32

_SESSION_SALT = "outbox_admin.dashboard.session"
_NAME_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Cn", "Co", "Zl", "Zp"})


class Role(StrEnum):
    """What a user may do: ``viewer`` looks, ``operator`` also acts."""

    VIEWER = "viewer"
    OPERATOR = "operator"


@dataclass(frozen=True)
class DashboardUser:
    """Who is acting in the dashboard: the name the audit trail records (``admin:<name>``), the
    role, and how they were recognised (``proxy``, ``password`` or ``open``)."""

    name: str
    role: Role
    source: str = "password"

    @property
    def is_operator(self) -> bool:
        return self.role is Role.OPERATOR


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a user (empty, too long, a comma, an invisible character), or None."""
    if not name:
        return "a user name cannot be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"a user name has at most {MAX_NAME_LENGTH} characters"
    if name != name.strip():
        return "a user name cannot start or end with spaces"
    if "," in name:
        return "a user name cannot hold a comma (lists of names are comma-separated)"
    if any(unicodedata.category(c) in _NAME_HIDDEN for c in name):
        return "a user name cannot hold control or invisible characters"
    return None


# -- passwords ------------------------------------------------------------------------------------

SCRYPT_N = 2**14  # 16 MiB and about 50 ms per check: Python's and Django's choice
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_MAX_MEMORY = 256 * 1024 * 1024  # a stored hash asking for more is refused, not computed
_HASH_PREFIX = "scrypt"


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A salted scrypt hash for ``[dashboard.users]``: ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (base64)."""
    if not password:
        raise ConfigurationError("a password cannot be empty")
    _check_cost(n, r, p, "hash_password")
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, n, r, p)
    return "$".join((_HASH_PREFIX, str(n), str(r), str(p), _b64(salt), _b64(digest)))


@dataclass(frozen=True)
class PasswordHash:
    """A parsed ``hash_password`` string; ``verify`` compares in constant time."""

    text: str
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str, where: str = "password hash") -> PasswordHash:
        wrong = f"{where}: not a password hash; make one with `outbox-admin hash-password`"
        parts = text.split("$") if isinstance(text, str) and len(text) < 1000 else []
        if len(parts) != 6 or parts[0] != _HASH_PREFIX:
            raise ConfigurationError(wrong)
        try:
            n, r, p = (int(v) for v in parts[1:4])
            salt = base64.b64decode(parts[4], validate=True)
            digest = base64.b64decode(parts[5], validate=True)
        except (ValueError, binascii.Error):
            raise ConfigurationError(wrong) from None
        _check_cost(n, r, p, where)
        if len(salt) < 8 or not 16 <= len(digest) <= 64:
            raise ConfigurationError(f"{where}: the salt or the hash is too short")
        return cls(text, n, r, p, salt, digest)

    def verify(self, password: str) -> bool:
        return hmac.compare_digest(_scrypt(password, self.salt, self.n, self.r, self.p, len(self.digest)), self.digest)


def _check_cost(n: int, r: int, p: int, where: str) -> None:
    if n < 2**10 or n > 2**20 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ConfigurationError(f"{where}: scrypt cost n={n}, r={r}, p={p} is out of bounds")
    if 128 * n * r * p > _SCRYPT_MAX_MEMORY:
        raise ConfigurationError(f"{where}: scrypt cost n={n}, r={r}, p={p} needs more than 256 MiB")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int = 32) -> bytes:
    data = password.encode("utf-8", "surrogatepass")
    return hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * n * r * p + 1024 * 1024, dklen=length)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# A hash checked when a name has no personal password, so both cases cost the same time.
@functools.cache
def _decoy_hash() -> PasswordHash:
    return PasswordHash.parse(hash_password(secrets.token_urlsafe(16)))


# -- settings -------------------------------------------------------------------------------------


@functools.cache
def process_secret() -> bytes:
    """The random signing key of this process, made on first use (``OUTBOX_DASHBOARD_SECRET`` unset)."""
    return secrets.token_bytes(32)


@dataclass(frozen=True)
class AccessSettings:
    """How people sign in to the dashboard and what they may do (see the module docstring).

    ``AccessSettings()`` is an open dashboard; ``AccessSettings.from_env()`` reads the
    ``OUTBOX_DASHBOARD_*`` variables and the ``[dashboard]`` table of ``outbox.toml`` /
    ``OUTBOX_CONFIG``.
    """

    password: str | None = None
    users: Mapping[str, PasswordHash] = field(default_factory=dict)
    user_header: str | None = None
    secret: bytes = b""  # empty: process_secret()
    session_seconds: float = DEFAULT_SESSION_HOURS * 3600
    operators: frozenset[str] = frozenset()
    viewers: frozenset[str] = frozenset()
    default_role: Role | None = None  # None: viewer when operators are named, else operator

    @property
    def open(self) -> bool:
        """Nobody has to sign in: no password, no personal passwords, no proxy header."""
        return self.password is None and not self.users and self.user_header is None

    @property
    def passwords(self) -> bool:
        """Whether the sign-in page can check anything."""
        return self.password is not None or bool(self.users)

    @property
    def signing_key(self) -> bytes:
        return self.secret or process_secret()

    def role_of(self, name: str) -> Role:
        if name in self.operators:
            return Role.OPERATOR
        if name in self.viewers:
            return Role.VIEWER
        if self.default_role is not None:
            return self.default_role
        return Role.VIEWER if self.operators else Role.OPERATOR

    def user(self, name: str, source: str) -> DashboardUser:
        return DashboardUser(name, self.role_of(name), source)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AccessSettings:
        env = os.environ if env is None else env
        section, origin = _dashboard_section(env)
        users: dict[str, PasswordHash] = {}
        for name, text in _table(section, "users", origin).items():
            _check_name(name, f"{origin}: [dashboard.users]")
            if not isinstance(text, str):
                raise ConfigurationError(f"{origin}: [dashboard.users] {name} must be a hash string")
            users[name] = PasswordHash.parse(text, f"{origin}: [dashboard.users] {name}")
        operators = _names(env.get("OUTBOX_DASHBOARD_OPERATORS"), "OUTBOX_DASHBOARD_OPERATORS") | _list(
            section, "operators", origin
        )
        viewers = _names(env.get("OUTBOX_DASHBOARD_VIEWERS"), "OUTBOX_DASHBOARD_VIEWERS") | _list(
            section, "viewers", origin
        )
        both = sorted(operators & viewers)
        if both:
            raise ConfigurationError(f"{', '.join(both)}: named both operator and viewer; name each user once")
        role_text = (env.get("OUTBOX_DASHBOARD_DEFAULT_ROLE") or "").strip() or section.get("default_role")
        default_role = _role(role_text) if role_text is not None else None
        header = (env.get("OUTBOX_DASHBOARD_USER_HEADER") or "").strip() or None
        if header is not None and not all(c.isalnum() or c in "-_" for c in header):
            raise ConfigurationError(f"OUTBOX_DASHBOARD_USER_HEADER={header!r} is not a header name")
        secret = env.get("OUTBOX_DASHBOARD_SECRET") or ""
        if secret and len(secret) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"OUTBOX_DASHBOARD_SECRET has {len(secret)} characters; use at least {MIN_SECRET_LENGTH}, e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return cls(
            password=env.get("OUTBOX_DASHBOARD_PASSWORD") or None,
            users=users,
            user_header=header,
            secret=secret.encode("utf-8"),
            session_seconds=_hours(env.get("OUTBOX_DASHBOARD_SESSION_HOURS")) * 3600,
            operators=operators,
            viewers=viewers,
            default_role=default_role,
        )


def _dashboard_section(env: Mapping[str, str]) -> tuple[Mapping[str, Any], str]:
    """The ``[dashboard]`` table of the configuration file (``{}`` without one), and the file's name."""
    data, origin = read_config(env=env)
    if origin is None:
        return {}, "config"
    section = data.get("dashboard", {})
    if not isinstance(section, dict):
        raise ConfigurationError(f"{origin}: 'dashboard' must be a table: write it as [dashboard]")
    if "password" in section:
        raise ConfigurationError(
            f"{origin}: do not write a password in the file: the shared one goes in OUTBOX_DASHBOARD_PASSWORD, "
            "personal ones as hashes in [dashboard.users] (outbox-admin hash-password)"
        )
    unknown = sorted(set(section) - set(DASHBOARD_KEYS))
    if unknown:
        raise ConfigurationError(
            f"{origin}: [dashboard] has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(DASHBOARD_KEYS)}"
        )
    return section, origin


def _table(section: Mapping[str, Any], key: str, origin: str) -> Mapping[str, Any]:
    value = section.get(key, {})
    if not isinstance(value, dict):
        raise ConfigurationError(f"{origin}: [dashboard] {key} must be a table: write it as [dashboard.{key}]")
    return value


def _list(section: Mapping[str, Any], key: str, origin: str) -> frozenset[str]:
    value = section.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{origin}: [dashboard] {key} must be a list of user names")
    for name in value:
        _check_name(name, f"{origin}: [dashboard] {key}")
    return frozenset(value)


def _names(text: str | None, variable: str) -> frozenset[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    for name in names:
        _check_name(name, variable)
    return frozenset(names)


def _check_name(name: str, where: str) -> None:
    problem = name_problem(name)
    if problem:
        raise ConfigurationError(f"{where}: {name!r}: {problem}")


def _role(text: Any) -> Role:
    try:
        return Role(str(text).strip().lower())
    except ValueError:
        raise ConfigurationError(f"default role {text!r}: use 'viewer' or 'operator'") from None


def _hours(text: str | None) -> float:
    if text is None or not text.strip():
        return DEFAULT_SESSION_HOURS
    try:
        hours = float(text)
    except ValueError:
        raise ConfigurationError(f"OUTBOX_DASHBOARD_SESSION_HOURS={text!r} is not a number") from None
    if not 0 < hours <= 24 * 90:
        raise ConfigurationError(f"OUTBOX_DASHBOARD_SESSION_HOURS={text!r} must be more than 0 and at most 2160")
    return hours


# -- sign-in sessions -----------------------------------------------------------------------------


def _serializer(settings: AccessSettings, clock: Callable[[], float]) -> Any:
    """itsdangerous' URL-safe timed serializer with the clock given (tests sign sessions in the past).

    Imported here: itsdangerous comes with the dashboard extra, and the CLI imports this module."""
    from itsdangerous import TimestampSigner, URLSafeTimedSerializer

    class ClockSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock())

    return URLSafeTimedSerializer(settings.signing_key, salt=_SESSION_SALT, signer=ClockSigner)


def _credential(settings: AccessSettings, name: str) -> str:
    """A fingerprint of the password a session was opened with: a changed password ends the session."""
    stored = settings.users[name].text if name in settings.users else f"shared:{settings.password or ''}"
    return hmac.new(settings.signing_key, f"{name}\x00{stored}".encode(), hashlib.sha256).hexdigest()[:24]


def issue_session(settings: AccessSettings, name: str, *, clock: Callable[[], float] = time.time) -> str:
    """The signed value of the session cookie for ``name`` (who signed in with a password)."""
    return _serializer(settings, clock).dumps({"u": name, "c": _credential(settings, name)})


def read_session(settings: AccessSettings, value: str | None, *, clock: Callable[[], float] = time.time) -> str | None:
    """The user name a session cookie names, or None when it is missing, forged, expired or stale."""
    if not value or len(value) > 4096 or not settings.passwords:
        return None
    from itsdangerous import BadData

    try:
        data = _serializer(settings, clock).loads(value, max_age=settings.session_seconds)
    except BadData:  # forged, damaged or expired
        return None
    if not isinstance(data, dict) or not isinstance(data.get("u"), str) or name_problem(data["u"]):
        return None
    name: str = data["u"]
    known = name in settings.users or settings.password is not None
    return name if known and hmac.compare_digest(str(data.get("c", "")), _credential(settings, name)) else None


def _header(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of one header, whatever the mapping's case convention (Starlette's or Streamlit's)."""
    for getter in ("getlist", "get_all"):
        if hasattr(headers, getter):
            values = getattr(headers, getter)(name)
            return [v for v in values if v is not None]
    wanted = name.lower()
    return [v for k, v in headers.items() if k.lower() == wanted]


def identify(
    settings: AccessSettings,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    *,
    clock: Callable[[], float] = time.time,
) -> DashboardUser | None:
    """Who sent a request: the proxy header, else the session cookie, else (open dashboard) ``dashboard``;
    None when nobody is signed in. A header sent twice or holding a bad name counts as no header."""
    if settings.user_header is not None:
        values = _header(headers, settings.user_header)
        named = values[0].strip() if len(values) == 1 else ""
        if named and name_problem(named) is None:
            return settings.user(named, "proxy")
        if values:
            log.warning("ignoring the %s header: %r is not one valid user name", settings.user_header, values[:2])
    if settings.open:
        return settings.user(OPEN_USER, "open")
    name = read_session(settings, cookies.get(SESSION_COOKIE), clock=clock)
    return settings.user(name, "password") if name is not None else None


def check_password(settings: AccessSettings, typed_name: str, password: str) -> DashboardUser | None:
    """The user a name and password sign in as, or None. Slow on purpose (scrypt) and the same
    time either way: run it off the event loop."""
    name = typed_name.strip() or SHARED_PASSWORD_USER
    if name_problem(name) is not None or len(password) > 1024:
        _decoy_hash().verify(password[:1024])
        return None
    personal = settings.users.get(name)
    if personal is not None:
        return settings.user(name, "password") if personal.verify(password) else None
    _decoy_hash().verify(password)  # as slow as a personal password
    if settings.password is None:
        return None
    typed = hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()
    shared = hashlib.sha256(settings.password.encode("utf-8", "surrogatepass")).digest()
    return settings.user(name, "password") if hmac.compare_digest(typed, shared) else None


def safe_next(target: str | None, base: str = "/") -> str:
    """Where to go after signing in: a path on this server (``/events?status=FAILED``), never
    another site; anything else is ``base``."""
    if not target or len(target) > 2000 or any(unicodedata.category(c) in _NAME_HIDDEN for c in target):
        return base
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return base
    return target if target.startswith(base.rstrip("/") + "/") or target == base.rstrip("/") else base


# -- slowing down wrong passwords -----------------------------------------------------------------


@dataclass(frozen=True)
class ThrottlePolicy:
    """How failed sign-ins slow down the next ones.

    Each client (address) waits ``base * 2**(failures - 1)`` seconds after a failure, at most
    ``max_seconds``, and is forgotten after ``forget_seconds`` without failing. Beyond
    ``global_free`` failures from everyone within ``forget_seconds`` (people mistype), every
    sign-in waits as well, ``global_base`` doubling up to ``global_max_seconds``: that slows a
    guesser who rotates addresses, while people who are signed in are never slowed.
    """

    base_seconds: float = 0.5
    max_seconds: float = 30.0
    global_free: int = 20
    global_base_seconds: float = 0.25
    global_max_seconds: float = 10.0
    forget_seconds: float = 900.0
    max_clients: int = 10_000  # bounded memory: the least recently failing clients are dropped


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


@dataclass(frozen=True)
class Failure:
    """One failed sign-in as the throttle counted it."""

    client: str
    failures: int  # from this client in a row
    wait_seconds: float  # until the next attempt is allowed


class LoginThrottle:
    """Counts failed sign-ins per client and overall (thread-safe; ``clock`` for tests)."""

    def __init__(self, policy: ThrottlePolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or ThrottlePolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: collections.OrderedDict[str, _Record] = collections.OrderedDict()
        self._global: collections.deque[float] = collections.deque()
        self._global_blocked_until = 0.0

    def retry_after(self, client: str) -> float:
        """Seconds before ``client`` may try again (0: now)."""
        with self._lock:
            now = self._clock()
            record = self._clients.get(client)
            mine = record.blocked_until - now if record is not None else 0.0
            return max(0.0, mine, self._global_blocked_until - now)

    def failed(self, client: str) -> Failure:
        policy = self.policy
        with self._lock:
            now = self._clock()
            record = self._clients.pop(client, None) or _Record()
            if now - record.last > policy.forget_seconds:
                record.failures = 0
            record.failures += 1
            record.last = now
            wait = min(policy.max_seconds, policy.base_seconds * 2 ** min(record.failures - 1, 60))
            record.blocked_until = now + wait
            self._clients[client] = record
            while len(self._clients) > policy.max_clients:
                self._clients.popitem(last=False)
            self._global.append(now)
            while self._global and now - self._global[0] > policy.forget_seconds:
                self._global.popleft()
            over = len(self._global) - policy.global_free
            if over > 0:
                overall = min(policy.global_max_seconds, policy.global_base_seconds * 2 ** min(over - 1, 60))
                self._global_blocked_until = max(self._global_blocked_until, now + overall)
            return Failure(client, record.failures, max(wait, self._global_blocked_until - now))

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)

    def clients(self) -> Iterable[str]:
        with self._lock:
            return list(self._clients)
