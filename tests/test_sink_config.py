"""Sinks from outbox.toml: building each type, secrets from the environment, clear errors, the CLI's --config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks

from outbox_admin import ConfigurationError, make_engine
from outbox_admin.handlers import NatsJetStreamSink, RabbitMQSink, RedisStreamSink, WebhookSink, load_sinks
from outbox_admin.handlers.webhook import generate_secret

from .sinks_support import WebhookReceiver, publish_demo, received, rows

SECRET = generate_secret()
ENV = {"HOOK_SECRET": SECRET, "AMQP_URL": "amqp://app:s3cret@127.0.0.1:5672/%2F"}

FULL = """
[[sinks]]
type = "webhook"
url = "https://example.com/hooks/outbox"
secret_env = "HOOK_SECRET"
event_types = ["PROJECT.*"]
org_ids = ["org-1", "org-2"]
timeout = 3
connect_timeout = 1.5
headers = { "x-team" = "billing" }

[[sinks]]
type = "redis-streams"
url = "redis://127.0.0.1:6379/0"
stream = "outbox:{event_type}"
maxlen = 100000
name = "events to redis"

[[sinks]]
type = "nats-jetstream"
url = "nats://127.0.0.1:4222"
subject_prefix = "acme.events"
stream = "ACME"
event_types = "PROJECT.CREATED"

[[sinks]]
type = "rabbitmq"
url_env = "AMQP_URL"
exchange = "acme"
mandatory = false
source = "/acme/outbox"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "outbox.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[list[Any]]:
    sinks = load_sinks(write(tmp_path, FULL), env=ENV)
    yield sinks
    for sink in sinks:
        sink.close()


def test_a_file_builds_every_sink_type_with_its_options(loaded: list[Any]) -> None:
    webhook, redis_sink, nats_sink, rabbit = loaded
    assert isinstance(webhook, WebhookSink)
    assert (webhook.url, webhook.timeout, webhook.connect_timeout) == ("https://example.com/hooks/outbox", 3.0, 1.5)
    assert webhook.event_types == ("PROJECT.*",) and webhook.org_ids == frozenset({"org-1", "org-2"})
    assert isinstance(redis_sink, RedisStreamSink)
    assert (redis_sink.stream, redis_sink.maxlen, redis_sink.name) == ("outbox:{event_type}", 100000, "events to redis")
    assert isinstance(nats_sink, NatsJetStreamSink)
    assert (nats_sink.subject_prefix, nats_sink.stream, nats_sink.event_types) == (
        "acme.events",
        "ACME",
        ("PROJECT.CREATED",),
    )
    assert isinstance(rabbit, RabbitMQSink)
    assert (rabbit.url, rabbit.exchange, rabbit.mandatory, rabbit.source) == (
        ENV["AMQP_URL"],
        "acme",
        False,
        "/acme/outbox",
    )
    assert "s3cret" not in rabbit.name


def test_the_webhook_secret_comes_from_the_environment(loaded: list[Any]) -> None:
    from .test_sinks import EVENT

    body, headers = loaded[0].signed_request(EVENT)
    assert standardwebhooks.Webhook(SECRET).verify(body, headers)["id"] == EVENT.id


def test_the_path_comes_from_outbox_config_then_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    config = write(tmp_path, '[[sinks]]\ntype = "redis-streams"\nurl = "redis://127.0.0.1:6379/0"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_sinks(env={}) == []  # no OUTBOX_CONFIG, no ./outbox.toml: no sinks
    [from_env] = load_sinks(env={"OUTBOX_CONFIG": str(config)})
    from_env.close()
    monkeypatch.chdir(tmp_path)
    [from_cwd] = load_sinks(env={})
    from_cwd.close()
    assert isinstance(from_env, RedisStreamSink) and isinstance(from_cwd, RedisStreamSink)
    with pytest.raises(
        ConfigurationError, match=r"config file .*missing.toml \(named by OUTBOX_CONFIG\) does not exist"
    ):
        load_sinks(env={"OUTBOX_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(
    ("text", "env", "complaint"),
    [
        (
            '[[sinks]]\ntype = "kafka"\nurl = "x"',
            {},
            "sink #1: unknown sink type 'kafka'; use one of 'nats-jetstream', 'rabbitmq', 'redis-streams', 'webhook'",
        ),
        ('[[sinks]]\nurl = "redis://h"', {}, "sink #1 has no 'type'"),
        ('[[sinks]]\ntype = ["webhook"]', {}, "sink #1: unknown sink type ['webhook']"),
        (
            '[[sinks]]\ntype = "webhook"\nurl = "https://h/x"\nsecret_env = "NOPE"',
            {},
            "sink #1 (webhook): environment variable NOPE (named by secret_env) is not set",
        ),
        (
            '[[sinks]]\ntype = "webhook"\nurl = "https://h/x"\nsecret_env = "EMPTY"',
            {"EMPTY": ""},
            "environment variable EMPTY (named by secret_env) is empty",
        ),
        ('[[sinks]]\ntype = "webhook"\nurl = "https://h/x"', {}, "secret_env is missing"),
        (
            '[[sinks]]\ntype = "webhook"\nurl = "https://h/x"\nsecret = "whsec_abc"',
            {},
            "do not write the secret in the file; put it in an environment variable and name that variable with "
            "secret_env",
        ),
        ('[[sinks]]\ntype = "rabbitmq"\nurl = "amqp://u:p@h/"', {}, "url contains credentials; put the whole URL"),
        ('[[sinks]]\ntype = "nats-jetstream"\nurl = "nats://token@h:4222"', {}, "url contains credentials"),
        ('[[sinks]]\ntype = "rabbitmq"\nurl = "amqp://h/"\nurl_env = "X"', {}, "give exactly one of url or url_env"),
        ('[[sinks]]\ntype = "rabbitmq"', {}, "give exactly one of url or url_env"),
        (
            '[[sinks]]\ntype = "redis-streams"\nurl = "redis://h"\nstreem = "x"',
            {},
            "sink #1 (redis-streams): unknown key(s) 'streem'; allowed: ",
        ),
        (
            '[[sinks]]\ntype = "redis-streams"\nurl = "redis://h"\nmaxlen = "10"',
            {},
            "maxlen must be an integer, not '10'",
        ),
        ('[[sinks]]\ntype = "redis-streams"\nurl = "redis://h"\ntimeout = true', {}, "timeout must be a number"),
        (
            '[[sinks]]\ntype = "redis-streams"\nurl = "redis://h"\nevent_types = [1]',
            {},
            "event_types must be a string or a list of strings",
        ),
        (
            '[[sinks]]\ntype = "redis-streams"\nurl = "http://h"',
            {},
            "sink #1 (redis-streams): RedisStreamSink: url 'http://h' must start with redis://",
        ),
        (
            '[[sinks]]\ntype = "nats-jetstream"\nurl = "nats://h"\nsubject_prefix = "a.>"',
            {},
            "subject_prefix 'a.>' must be dot-separated tokens",
        ),
        ('[[sink]]\ntype = "webhook"', {}, "unknown top-level key(s) 'sink'; expected [[sinks]] tables"),
        ('sinks = "webhook"', {}, "'sinks' must be an array of tables"),
        ("[[sinks]\n", {}, "not valid TOML"),
    ],
)
def test_mistakes_are_refused_with_a_clear_message(
    tmp_path: Path, text: str, env: dict[str, str], complaint: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        load_sinks(path, env=env)
    assert str(caught.value).startswith(str(path))
    assert complaint in str(caught.value)


def test_a_later_mistake_closes_the_sinks_already_built(tmp_path: Path) -> None:
    import threading

    before = set(threading.enumerate())
    text = '[[sinks]]\ntype = "nats-jetstream"\nurl = "nats://127.0.0.1:4222"\n\n[[sinks]]\ntype = "kafka"\n'
    with pytest.raises(ConfigurationError, match="sink #2"):
        load_sinks(write(tmp_path, text), env={})
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]  # the NATS loop thread was stopped


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox_admin", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_cli_dispatch_delivers_to_the_configured_sinks(tmp_path: Path, sqlite_url: str) -> None:
    receiver = WebhookReceiver()
    try:
        config = write(
            tmp_path,
            f'[[sinks]]\ntype = "webhook"\nurl = "{receiver.url("/ok")}"\nsecret_env = "CLI_HOOK_SECRET"\n',
        )
        engine = make_engine(sqlite_url)
        published = publish_demo(engine, 2)
        result = run_cli(
            "dispatch",
            "--once",
            "--json",
            "--quiet",
            "--config",
            str(config),
            "--database-url",
            sqlite_url,
            env={"CLI_HOOK_SECRET": SECRET},
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["completed"] == 2
        verifier = standardwebhooks.Webhook(SECRET)
        assert [received(verifier.verify(r.body, r.headers)) for r in receiver.at("/ok")] == published
        assert {r.status for r in rows(engine).values()} == {"COMPLETED"}
        engine.dispose()
    finally:
        receiver.close()


def test_cli_dispatch_with_a_bad_config_says_why_and_exits_2(tmp_path: Path, sqlite_url: str) -> None:
    config = write(tmp_path, '[[sinks]]\ntype = "webhook"\nurl = "https://h/x"\nsecret_env = "UNSET_SECRET_VAR"\n')
    env = {k: v for k, v in os.environ.items() if k != "UNSET_SECRET_VAR"}
    result = subprocess.run(
        [sys.executable, "-m", "outbox_admin", "dispatch", "--once", "--database-url", sqlite_url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "OUTBOX_CONFIG": str(config)},  # the path from the environment, as in a deployment
    )
    assert result.returncode == 2  # bad input, as for any ConfigurationError
    assert "Traceback" not in result.stderr
    assert (
        f"error: {config}: sink #1 (webhook): environment variable UNSET_SECRET_VAR (named by secret_env) is not set"
        in (" ".join(result.stderr.split()))
    )
