"""Who may use the dashboard (``outbox_admin.access``): passwords, roles, sessions, the proxy header, the throttle."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from starlette.datastructures import Headers

from outbox_admin.access import (
    OPEN_USER,
    SESSION_COOKIE,
    AccessSettings,
    DashboardUser,
    LoginThrottle,
    PasswordHash,
    Role,
    ThrottlePolicy,
    check_password,
    hash_password,
    identify,
    issue_session,
    name_problem,
    read_session,
    safe_next,
)
from outbox_admin.errors import ConfigurationError

from .cli_support import run_main

SECRET = "s" * 40
FAST = {"n": 2**10}  # the cheapest cost the parser accepts: tests need not wait 50 ms per hash


@pytest.fixture(autouse=True)
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``outbox.toml`` from the checkout: each test writes its own or none."""
    monkeypatch.chdir(tmp_path)
    for name in ("OUTBOX_CONFIG", "OUTBOX_DASHBOARD_PASSWORD", "OUTBOX_DASHBOARD_USER_HEADER"):
        monkeypatch.delenv(name, raising=False)


def settings(**env: str) -> AccessSettings:
    return AccessSettings.from_env({"OUTBOX_DASHBOARD_SECRET": SECRET, **env})


# -- passwords ------------------------------------------------------------------------------------


def test_a_hash_verifies_its_password_only_and_is_salted() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and first.startswith("scrypt$16384$8$1$")
    parsed = PasswordHash.parse(first)
    assert parsed.verify("correct horse")
    assert not parsed.verify("correct horsE") and not parsed.verify("")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain-text-password",
        "scrypt$16384$8$1$c2FsdHNhbHQ=",  # a part missing
        "bcrypt$16384$8$1$c2FsdHNhbHRzYWx0$" + "A" * 44,
        "scrypt$1000$8$1$c2FsdHNhbHRzYWx0$" + "A" * 44,  # n not a power of two
        "scrypt$1073741824$8$1$c2FsdHNhbHRzYWx0$" + "A" * 44,  # 2**30: would need 1 TiB
        "scrypt$1048576$32$16$c2FsdHNhbHRzYWx0$" + "A" * 44,  # within each bound, too much memory together
        "scrypt$16384$8$1$not base64!$" + "A" * 44,
        "scrypt$16384$8$1$c2E=$" + "A" * 44,  # a 2-byte salt
        "scrypt$" + "9" * 2000,
    ],
)
def test_a_bad_hash_is_refused_at_once(text: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="users alice"):
        PasswordHash.parse(text, "users alice")
    assert time.monotonic() - started < 0.5  # refused, never computed


def test_the_cli_prints_a_hash_that_verifies(monkeypatch, capsys) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO("pässwörd\n"))
    code, out, err = run_main(monkeypatch, capsys, "hash-password", "--stdin")
    assert (code, err) == (0, "")
    assert PasswordHash.parse(out.strip()).verify("pässwörd")
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    code, out, err = run_main(monkeypatch, capsys, "hash-password", "--stdin")
    assert code == 2 and "cannot be empty" in err and out == ""


# -- settings and roles ---------------------------------------------------------------------------


def test_an_unconfigured_dashboard_is_open_and_everyone_may_act() -> None:
    access = AccessSettings.from_env({})
    assert access.open and not access.passwords
    assert identify(access, {}, {}) == DashboardUser(OPEN_USER, Role.OPERATOR, "open")


def test_naming_operators_makes_everyone_else_a_viewer() -> None:
    assert settings(OUTBOX_DASHBOARD_PASSWORD="pw").role_of("anyone") is Role.OPERATOR  # one shared password
    access = settings(OUTBOX_DASHBOARD_PASSWORD="pw", OUTBOX_DASHBOARD_OPERATORS="alice, bob")
    assert [access.role_of(n) for n in ("alice", "bob", "carol")] == [Role.OPERATOR, Role.OPERATOR, Role.VIEWER]
    access = settings(OUTBOX_DASHBOARD_VIEWERS="carol", OUTBOX_DASHBOARD_DEFAULT_ROLE="Viewer")
    assert [access.role_of(n) for n in ("carol", "dave")] == [Role.VIEWER, Role.VIEWER]
    access = settings(OUTBOX_DASHBOARD_OPERATORS="alice", OUTBOX_DASHBOARD_DEFAULT_ROLE="operator")
    assert access.role_of("dave") is Role.OPERATOR


def test_roles_and_personal_passwords_come_from_outbox_toml(tmp_path: Path) -> None:
    alice = hash_password("alice-pw", **FAST)
    (tmp_path / "outbox.toml").write_text(
        f'[dashboard]\noperators = ["alice"]\nviewers = ["carol"]\n\n[dashboard.users]\nalice = "{alice}"\n'
    )
    access = settings(OUTBOX_DASHBOARD_OPERATORS="bob")  # the environment adds to the file
    assert access.operators == {"alice", "bob"} and access.viewers == {"carol"}
    assert access.role_of("dave") is Role.VIEWER
    assert access.passwords and not access.open and set(access.users) == {"alice"}
    assert check_password(access, "alice", "alice-pw") == DashboardUser("alice", Role.OPERATOR)


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[dashboard]\npassword = 'x'", {}, "do not write a password in the file"),
        ("[dashboard]\nadmins = ['x']", {}, "unknown key(s) 'admins'"),
        ("dashboard = 3", {}, "'dashboard' must be a table"),
        ("[dashboard]\noperators = 'alice'", {}, "operators must be a list of user names"),
        ('[dashboard]\noperators = ["al\\u202eice"]', {}, "control or invisible characters"),
        ("[dashboard.users]\nalice = 'hunter2'", {}, "[dashboard.users] alice: not a password hash"),
        ("[dashboard]\ndefault_role = 'admin'", {}, "use 'viewer' or 'operator'"),
        ("[dashboard\n", {}, "not valid TOML"),
        ("", {"OUTBOX_DASHBOARD_OPERATORS": "alice", "OUTBOX_DASHBOARD_VIEWERS": "alice"}, "both operator and viewer"),
        ("", {"OUTBOX_DASHBOARD_SECRET": "short"}, "use at least 32"),
        ("", {"OUTBOX_DASHBOARD_SESSION_HOURS": "-1"}, "must be more than 0"),
        ("", {"OUTBOX_DASHBOARD_SESSION_HOURS": "soon"}, "is not a number"),
        ("", {"OUTBOX_DASHBOARD_USER_HEADER": "X-User: admin"}, "is not a header name"),
        ("", {"OUTBOX_DASHBOARD_DEFAULT_ROLE": "root"}, "use 'viewer' or 'operator'"),
    ],
)
def test_configuration_mistakes_are_refused_with_a_clear_message(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    (tmp_path / "outbox.toml").write_text(toml)
    with pytest.raises(ConfigurationError) as caught:
        AccessSettings.from_env({"OUTBOX_DASHBOARD_SECRET": SECRET, **env})
    assert message in str(caught.value)


def test_the_sinks_loader_accepts_the_dashboard_table(tmp_path: Path) -> None:
    from outbox_admin.handlers.config import load_sinks

    (tmp_path / "outbox.toml").write_text("[dashboard]\noperators = ['alice']\n")
    assert load_sinks() == []


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("alice", True),
        ("alice@example.com", True),
        ("Zoë Müller", True),
        ("", False),
        (" alice", False),
        ("a,b", False),
        ("al\x1bice", False),
        ("al\u202eice", False),
        ("a" * 101, False),
    ],
)
def test_user_names(name: str, ok: bool) -> None:
    assert (name_problem(name) is None) is ok


# -- passwords at sign-in -------------------------------------------------------------------------


def test_the_shared_password_signs_in_under_the_typed_name() -> None:
    access = settings(OUTBOX_DASHBOARD_PASSWORD="pw", OUTBOX_DASHBOARD_OPERATORS="alice")
    assert check_password(access, "alice", "pw") == DashboardUser("alice", Role.OPERATOR)
    assert check_password(access, "  carol ", "pw") == DashboardUser("carol", Role.VIEWER)
    assert check_password(access, "", "pw") == DashboardUser("operator", Role.VIEWER)
    assert check_password(access, "alice", "PW") is None
    assert check_password(access, "al\x1bice", "pw") is None
    assert check_password(access, "alice", "pw" * 1000) is None


def test_a_personal_password_is_the_only_one_for_that_name(tmp_path: Path) -> None:
    (tmp_path / "outbox.toml").write_text(f'[dashboard.users]\nalice = "{hash_password("mine", **FAST)}"\n')
    access = settings(OUTBOX_DASHBOARD_PASSWORD="shared")
    assert check_password(access, "alice", "mine") is not None
    assert check_password(access, "alice", "shared") is None  # nobody else signs in as alice
    assert check_password(access, "bob", "shared") is not None
    assert check_password(access, "bob", "mine") is None
    without_shared = settings()
    assert check_password(without_shared, "bob", "") is None


# -- sessions -------------------------------------------------------------------------------------


def test_a_session_names_its_user_until_it_expires() -> None:
    access = settings(OUTBOX_DASHBOARD_PASSWORD="pw", OUTBOX_DASHBOARD_SESSION_HOURS="1")
    now = time.time()
    cookie = issue_session(access, "alice", clock=lambda: now)
    assert read_session(access, cookie, clock=lambda: now + 3599) == "alice"
    assert read_session(access, cookie, clock=lambda: now + 3601) is None
    assert identify(access, {}, {SESSION_COOKIE: cookie}) == DashboardUser("alice", Role.OPERATOR, "password")


def test_a_forged_or_stale_session_names_nobody(tmp_path: Path) -> None:
    access = settings(OUTBOX_DASHBOARD_PASSWORD="pw")
    cookie = issue_session(access, "alice")
    payload, stamp, signature = cookie.split(".")
    forged = issue_session(access, "mallory").split(".")[0] + f".{stamp}.{signature}"
    assert read_session(access, forged) is None
    assert read_session(access, cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")) is None
    assert read_session(access, "") is None and read_session(access, "x" * 5000) is None
    other_secret = AccessSettings.from_env({"OUTBOX_DASHBOARD_SECRET": "t" * 40, "OUTBOX_DASHBOARD_PASSWORD": "pw"})
    assert read_session(other_secret, cookie) is None
    new_password = settings(OUTBOX_DASHBOARD_PASSWORD="new")
    assert read_session(new_password, cookie) is None  # changing the password ends its sessions
    assert read_session(settings(OUTBOX_DASHBOARD_USER_HEADER="X-User"), cookie) is None  # no passwords any more


def test_without_a_secret_sessions_last_as_long_as_the_process() -> None:
    access = AccessSettings.from_env({"OUTBOX_DASHBOARD_PASSWORD": "pw"})
    assert access.secret == b"" and len(access.signing_key) == 32
    cookie = issue_session(access, "alice")
    assert read_session(AccessSettings.from_env({"OUTBOX_DASHBOARD_PASSWORD": "pw"}), cookie) == "alice"


# -- the proxy header -----------------------------------------------------------------------------


def test_the_proxy_header_names_the_user_in_any_case_convention(caplog: pytest.LogCaptureFixture) -> None:
    access = settings(OUTBOX_DASHBOARD_USER_HEADER="X-Forwarded-User", OUTBOX_DASHBOARD_OPERATORS="alice")
    starlette = Headers(raw=[(b"x-forwarded-user", b"alice")])
    assert identify(access, starlette, {}) == DashboardUser("alice", Role.OPERATOR, "proxy")
    assert identify(access, {"X-Forwarded-User": "carol"}, {}) == DashboardUser("carol", Role.VIEWER, "proxy")
    assert identify(access, {}, {}) is None  # no header and no password: nobody
    with caplog.at_level(logging.WARNING, logger="outbox_admin.access"):
        twice = Headers(raw=[(b"x-forwarded-user", b"alice"), (b"x-forwarded-user", b"mallory")])
        assert identify(access, twice, {}) is None
        assert identify(access, {"x-forwarded-user": "al\x1bice"}, {}) is None
    assert len(caplog.records) == 2 and "'al\\x1bice'" in caplog.records[1].getMessage()


def test_off_by_default_the_header_is_ignored() -> None:
    access = settings(OUTBOX_DASHBOARD_PASSWORD="pw")
    assert access.user_header is None
    assert identify(access, {"X-Forwarded-User": "alice"}, {}) is None


def test_without_the_header_a_password_session_still_works() -> None:
    access = settings(OUTBOX_DASHBOARD_USER_HEADER="X-Forwarded-User", OUTBOX_DASHBOARD_PASSWORD="pw")
    cookie = issue_session(access, "bob")
    assert identify(access, {}, {SESSION_COOKIE: cookie}) == DashboardUser("bob", Role.OPERATOR, "password")


# -- where to go after signing in -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "base", "expected"),
    [
        ("/events?status=FAILED", "/", "/events?status=FAILED"),
        ("/", "/", "/"),
        (None, "/", "/"),
        ("https://evil.example/", "/", "/"),
        ("//evil.example/x", "/", "/"),
        ("/\\evil.example", "/", "/"),
        ("javascript:alert(1)", "/", "/"),
        ("events", "/", "/"),
        ("/x\r\nSet-Cookie: a=b", "/", "/"),
        ("/" + "a" * 3000, "/", "/"),
        ("/console/events?x=1", "/console/", "/console/events?x=1"),
        ("/other/events", "/console/", "/console/"),
    ],
)
def test_only_paths_on_this_server_are_followed(target: str | None, base: str, expected: str) -> None:
    assert safe_next(target, base) == expected


# -- the throttle ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_double_the_wait_up_to_a_bound_per_client() -> None:
    clock = Clock()
    throttle = LoginThrottle(ThrottlePolicy(base_seconds=1, max_seconds=8, global_free=1000), clock)
    waits = []
    for _ in range(6):
        waits.append(throttle.failed("10.0.0.1").wait_seconds)
        assert throttle.retry_after("10.0.0.1") == waits[-1]
        clock.now += waits[-1]
        assert throttle.retry_after("10.0.0.1") == 0
    assert waits == [1, 2, 4, 8, 8, 8]
    assert throttle.retry_after("10.0.0.2") == 0  # another client is not slowed
    throttle.succeeded("10.0.0.1")
    assert throttle.failed("10.0.0.1").failures == 1  # a success starts over


def test_a_quiet_client_is_forgotten() -> None:
    clock = Clock()
    throttle = LoginThrottle(ThrottlePolicy(base_seconds=1, forget_seconds=60, global_free=1000), clock)
    for _ in range(3):
        throttle.failed("a")
    clock.now += 61
    assert throttle.failed("a").failures == 1


def test_many_failures_from_everyone_slow_every_sign_in() -> None:
    clock = Clock()
    policy = ThrottlePolicy(base_seconds=0.001, global_free=3, global_base_seconds=1, global_max_seconds=4)
    throttle = LoginThrottle(policy, clock)
    for n in range(3):
        throttle.failed(f"10.0.0.{n}")  # within the free failures: only those clients wait
    clock.now += 1
    assert throttle.retry_after("10.9.9.9") == 0
    overall = [throttle.failed(f"10.1.0.{n}").wait_seconds for n in range(5)]
    assert overall == [1, 2, 4, 4, 4]
    assert throttle.retry_after("10.9.9.9") == 4  # a new address waits too
    clock.now += 4
    assert throttle.retry_after("10.9.9.9") == 0


def test_the_throttle_remembers_a_bounded_number_of_clients() -> None:
    throttle = LoginThrottle(ThrottlePolicy(max_clients=100, global_free=10**6), Clock())
    for n in range(1000):
        throttle.failed(f"client-{n}")
    remembered = throttle.clients()
    assert len(remembered) == 100 and "client-999" in remembered and "client-0" not in remembered
