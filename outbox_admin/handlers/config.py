"""Sinks from a TOML file, for the CLI and the dashboard: ``outbox.toml``, or the file ``OUTBOX_CONFIG`` names.

::

    [[sinks]]
    type = "webhook"                       # webhook | redis-streams | nats-jetstream | rabbitmq
    url = "https://example.com/hooks/outbox"
    secret_env = "OUTBOX_WEBHOOK_SECRET"   # the secret is read from this environment variable
    event_types = ["PROJECT.*"]            # optional routing
    org_ids = ["org-1"]

Secrets never live in the file: a webhook secret comes from the variable named by
``secret_env``, and a URL with credentials from the one named by ``url_env``; a
``secret`` key or a password inside ``url`` is refused. Every mistake (unknown
type or key, wrong value type, unset variable) raises ``ConfigurationError``
naming the file, the sink and the key.

The same file names the application's own handlers, for ``outbox-admin dispatch`` and
the dashboard's dispatcher::

    handlers = "myapp.outbox:handlers"     # module:attribute

The attribute is a list (or tuple) of handlers, or a factory: a callable taking no
arguments that returns one (a single handler is written as a one-item list, since a
handler is callable too). The module is imported with the working directory on
``sys.path``, as ``python -m`` would. Its ``[dashboard]`` table lists the databases a
read-only dashboard may switch to: ``databases = { prod = "postgresql://...", ... }``
(names shown, URLs hidden; URLs with passwords belong in ``url_env``-style variables:
``{ prod = { url_env = "PROD_DATABASE_URL" } }``).
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..errors import ConfigurationError

CONFIG_ENV = "OUTBOX_CONFIG"
DEFAULT_CONFIG_FILE = "outbox.toml"
TOP_LEVEL_KEYS = ("sinks", "handlers", "dashboard")
#: The keys of ``[dashboard]``: ``databases`` read here, the access rules by ``outbox_admin.access``.
DASHBOARD_KEYS = ("databases", "operators", "viewers", "default_role", "users")

Check = Callable[[Any], bool]


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _is_str_table(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


_EXPECTED: dict[Check, str] = {
    _is_str: "a string",
    _is_number: "a number",
    _is_int: "an integer",
    _is_bool: "true or false",
    _is_str_list: "a string or a list of strings",
    _is_str_table: "a table of strings",
}

COMMON_OPTIONS: dict[str, Check] = {
    "name": _is_str,
    "event_types": _is_str_list,
    "org_ids": _is_str_list,
    "source": _is_str,
    "timeout": _is_number,
}


@dataclass(frozen=True)
class SinkType:
    """How a ``type = "..."`` entry becomes a sink: the class, and the keys it takes besides the common ones."""

    module: str
    cls: str
    options: Mapping[str, Check] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()  # keys that must come from an environment variable (``<key>_env``)

    def factory(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module, __package__), self.cls)  # type: ignore[no-any-return]


SINK_TYPES: dict[str, SinkType] = {
    "webhook": SinkType(
        ".webhook",
        "WebhookSink",
        {"connect_timeout": _is_number, "headers": _is_str_table},
        secrets=("secret",),
    ),
    "redis-streams": SinkType(".redis_streams", "RedisStreamSink", {"stream": _is_str, "maxlen": _is_int}),
    "nats-jetstream": SinkType(
        ".nats_jetstream",
        "NatsJetStreamSink",
        {"subject_prefix": _is_str, "stream": _is_str, "create_stream": _is_bool},
    ),
    "rabbitmq": SinkType(
        ".rabbitmq", "RabbitMQSink", {"exchange": _is_str, "declare_exchange": _is_bool, "mandatory": _is_bool}
    ),
}


def config_path(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read: ``path``, else ``$OUTBOX_CONFIG``, else ``./outbox.toml`` if it exists."""
    env = os.environ if env is None else env
    if path is not None:
        return Path(path)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def read_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], str | None]:
    """The parsed config file and its name (``({}, None)`` when there is none)."""
    env = os.environ if env is None else env
    file = config_path(path, env)
    if file is None:
        return {}, None
    hint = f" (named by {CONFIG_ENV})" if path is None and env.get(CONFIG_ENV) else ""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"config file {file}{hint} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"config file {file}{hint} cannot be read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{file}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigurationError(
            f"{file}: unknown top-level key(s) {', '.join(map(repr, unknown))}; expected [[sinks]] tables, "
            'handlers = "module:attr" or a [dashboard] table'
        )
    return data, str(file)


def load_sinks(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> list[Any]:
    """The sinks a TOML file describes (``[]`` when no path is given, none is configured and there is no outbox.toml).

    ``env`` (default ``os.environ``) supplies ``OUTBOX_CONFIG`` and the variables
    named by ``secret_env`` / ``url_env``. Sinks connect on first use, so loading
    them needs no server.
    """
    env = os.environ if env is None else env
    data, origin = read_config(path, env=env)
    if origin is None:
        return []
    return build_sinks({"sinks": data.get("sinks", [])}, env=env, origin=origin)


@dataclass(frozen=True)
class Deliveries:
    """What a dispatcher started from configuration delivers to: the application's handlers, then its sinks."""

    handlers: tuple[Any, ...] = ()
    sinks: tuple[Any, ...] = ()
    handlers_spec: str | None = None  # the ``handlers = "module:attr"`` it came from
    origin: str | None = None  # the config file

    @property
    def targets(self) -> list[Any]:
        return [*self.handlers, *self.sinks]

    @property
    def names(self) -> list[str]:
        from .base import handler_name

        return [handler_name(target) for target in self.targets]

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def load_deliveries(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> Deliveries:
    """The handlers (``handlers = "module:attr"``) and sinks (``[[sinks]]``) of the config file."""
    env = os.environ if env is None else env
    data, origin = read_config(path, env=env)
    if origin is None:
        return Deliveries()
    spec = data.get("handlers")
    handlers = () if spec is None else tuple(import_handlers(spec, origin=origin))
    sinks = tuple(build_sinks({"sinks": data.get("sinks", [])}, env=env, origin=origin))
    return Deliveries(handlers, sinks, spec, origin)


def import_handlers(spec: Any, *, origin: str = "config") -> list[Any]:
    """Import ``"package.module:attribute"``: a list of handlers, or a factory returning one."""
    where = f"{origin}: handlers = {spec!r}"
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigurationError(f'{origin}: handlers must be a string "package.module:attribute", not {spec!r}')
    module_name, attribute = spec.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does, so an application's own package is found
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure of the application's import is a config error
        raise ConfigurationError(f"{where}: cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"{where}: {module_name} has no attribute {attribute!r}") from None
    if callable(value) and not isinstance(value, list | tuple):
        try:
            value = value()
        except Exception as exc:  # noqa: BLE001
            raise ConfigurationError(f"{where}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(value, list | tuple):
        raise ConfigurationError(
            f"{where}: expected a list of handlers or a factory returning one, got {type(value).__name__}"
        )
    for index, handler in enumerate(value):
        if not callable(handler):
            raise ConfigurationError(f"{where}: item {index} ({type(handler).__name__}) is not callable")
    return list(value)


def dashboard_databases(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The ``[dashboard] databases`` of the config file: name -> URL."""
    env = os.environ if env is None else env
    data, origin = read_config(path, env=env)
    section = data.get("dashboard", {})
    where = f"{origin}: [dashboard]"
    if not isinstance(section, dict):
        raise ConfigurationError(f"{where} must be a table")
    unknown = sorted(set(section) - set(DASHBOARD_KEYS))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(DASHBOARD_KEYS)}"
        )
    databases = section.get("databases", {})
    if not isinstance(databases, dict):
        raise ConfigurationError(f"{where}: databases must be a table of name = URL")
    urls: dict[str, str] = {}
    for name, value in databases.items():
        if isinstance(value, dict) and set(value) == {"url_env"} and isinstance(value["url_env"], str):
            url = env.get(value["url_env"])
            if not url:
                raise ConfigurationError(f"{where}: databases.{name}: {value['url_env']} is not set")
            urls[name] = url
        elif isinstance(value, str):
            try:
                has_password = make_url(value).password is not None
            except ArgumentError:
                raise ConfigurationError(f"{where}: databases.{name} is not a database URL") from None
            if has_password:
                raise ConfigurationError(
                    f"{where}: databases.{name}: do not write a password in the file; "
                    'use { url_env = "VARIABLE" } and put the URL in that variable'
                )
            urls[name] = value
        else:
            raise ConfigurationError(f'{where}: databases.{name} must be a URL or {{ url_env = "VARIABLE" }}')
    return urls


def build_sinks(
    config: Mapping[str, Any], *, env: Mapping[str, str] | None = None, origin: str = "config"
) -> list[Any]:
    """The sinks of an already parsed config (``{"sinks": [{"type": ..., ...}, ...]}``)."""
    env = os.environ if env is None else env
    unknown = sorted(set(config) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigurationError(
            f"{origin}: unknown top-level key(s) {', '.join(map(repr, unknown))}; expected [[sinks]] tables"
        )
    entries = config.get("sinks", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigurationError(f"{origin}: 'sinks' must be an array of tables: write each one as [[sinks]]")
    sinks: list[Any] = []
    try:
        for number, entry in enumerate(entries, start=1):
            sinks.append(_build_one(entry, env, f"{origin}: sink #{number}"))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def _build_one(entry: Mapping[str, Any], env: Mapping[str, str], where: str) -> Any:
    kind = entry.get("type")
    if not isinstance(kind, str) or kind not in SINK_TYPES:
        known = ", ".join(map(repr, sorted(SINK_TYPES)))
        if kind is None:
            raise ConfigurationError(f"{where} has no 'type'; use one of {known}")
        raise ConfigurationError(f"{where}: unknown sink type {kind!r}; use one of {known}")
    where = f"{where} ({kind})"
    spec = SINK_TYPES[kind]
    options = {**COMMON_OPTIONS, **spec.options}
    env_keys = {"url_env", *(f"{s}_env" for s in spec.secrets)}
    allowed = {"type", "url", *options, *env_keys}
    for secret in spec.secrets:
        if secret in entry:
            raise ConfigurationError(
                f"{where}: do not write the {secret} in the file; put it in an environment variable "
                f'and name that variable with {secret}_env = "..."'
            )
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in entry.items():
        if key in options:
            if not options[key](value):
                raise ConfigurationError(f"{where}: {key} must be {_EXPECTED[options[key]]}, not {value!r}")
            kwargs[key] = value
    kwargs["url"] = _url(entry, env, where)
    for secret in spec.secrets:
        kwargs[secret] = _from_env(entry, f"{secret}_env", env, where)
    try:
        return spec.factory()(**kwargs)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc


def _url(entry: Mapping[str, Any], env: Mapping[str, str], where: str) -> str:
    if ("url" in entry) == ("url_env" in entry):
        raise ConfigurationError(f"{where}: give exactly one of url or url_env (url_env for a URL with credentials)")
    if "url_env" in entry:
        return _from_env(entry, "url_env", env, where)
    url = entry["url"]
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"{where}: url must be a non-empty string, not {url!r}")
    for server in url.split(","):
        parts = urlsplit(server.strip())
        if parts.password is not None or (parts.username and parts.scheme in ("nats", "tls", "ws", "wss")):
            raise ConfigurationError(
                f"{where}: url contains credentials; put the whole URL in an environment variable "
                'and name that variable with url_env = "..."'
            )
    return url


def _from_env(entry: Mapping[str, Any], key: str, env: Mapping[str, str], where: str) -> str:
    name = entry.get(key)
    if name is None:
        raise ConfigurationError(f"{where}: {key} is missing: name the environment variable that holds it")
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{where}: {key} must name an environment variable, not {name!r}")
    value = env.get(name)
    if not value:
        state = "is empty" if value == "" else "is not set"
        raise ConfigurationError(f"{where}: environment variable {name} (named by {key}) {state}")
    return value
