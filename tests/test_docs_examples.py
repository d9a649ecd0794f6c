"""Every code example of README.md and the docs site (docs/**/*.md) runs, so one that stops working fails CI.

- Each page's ```python blocks run in order in one namespace (a block may use what an earlier block of
  the same page defined), in a separate Python process whose working directory is a fresh temporary
  folder: one test per page. A traceback names the page and the line of the Markdown file.
- A block whose first line is ``# not run: <reason>`` is skipped; the reason is mandatory, and
  ``test_the_blocks_not_run_are_few_and_say_why`` lists them (keep them few: fragments such as an
  excerpt of your Alembic ``env.py``).
- The environment a page gets: ``OUTBOX_DATABASE_URL``, a SQLite file ``outbox.db`` in the working
  directory that does not exist yet, or, on a page holding ``<!-- examples: postgres -->``, a fresh
  PostgreSQL database with no tables. ``REDIS_URL``, ``NATS_URL`` and ``AMQP_URL`` are the test servers
  (tests/services.py; a page that names one needs that server: skipped when unreachable, failed under
  ``OUTBOX_REQUIRE_SERVICES=1``), ``WEBHOOK_URL`` a real receiver on 127.0.0.1 answering 204 and
  ``WEBHOOK_SECRET`` a fresh secret. The names the examples use on the shared servers (Redis keys
  ``outbox:*``, the JetStream stream ``OUTBOX``, the RabbitMQ exchange ``outbox`` and queue ``billing``)
  are removed before and after the page, so each run owns its data.
- ```toml blocks must parse; the ``outbox-admin`` commands of ```bash / ```console blocks must name
  existing commands and options (checked against the CLI; each shown command's ``--help`` runs). A shell
  block right after ``<!-- examples: run -->`` is run line by line after the page's Python blocks, in
  the same folder and environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from .docs_support import POSTGRES_PAGE, ROOT, Block, blocks, pages, python_blocks
from .services import NATS_URL, RABBITMQ_URL, REDIS_URL, require_nats, require_rabbitmq, require_redis
from .sinks_support import WebhookReceiver

README = ROOT / "README.md"
PAGES = pages()
#: Blocks not run, all pages together: keep this small.
MAX_NOT_RUN = 5
#: Seconds one page's examples may take (they run against local servers; the whole file stays under 20 s).
PAGE_TIMEOUT = 60


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def runnable(path: Path) -> list[Block]:
    return [b for b in python_blocks(path) if b.not_run_reason is None]


RUNNABLE_PAGES = [p for p in PAGES if runnable(p) or any(b.run for b in blocks(p))]


def _clean_shared_names(sources: str) -> None:
    """Remove what the examples create under fixed names on the shared servers."""
    if "REDIS_URL" in sources:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            for key in client.scan_iter(match="outbox:*"):
                client.delete(key)
        finally:
            client.close()
    if "NATS_URL" in sources:
        import nats
        from nats.js.errors import NotFoundError

        async def drop_stream() -> None:
            nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
            try:
                await nc.jetstream().delete_stream("OUTBOX")
            except NotFoundError:
                pass
            finally:
                await nc.close()

        asyncio.run(drop_stream())
    if "AMQP_URL" in sources:
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        try:
            channel = connection.channel()
            channel.queue_delete("billing")
            channel.exchange_delete("outbox")
        finally:
            connection.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver()
    try:
        yield hook
    finally:
        hook.close()


@pytest.mark.parametrize("path", RUNNABLE_PAGES, ids=page_id)
def test_the_examples_of_a_page_run(path: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    page = path.read_text(encoding="utf-8")
    todo = runnable(path)
    sources = "\n".join(b.source for b in todo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_DATABASE_URL", "OUTBOX_CONFIG"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["OUTBOX_DATABASE_URL"] = (
        request.getfixturevalue("empty_postgres_url")
        if POSTGRES_PAGE in page
        else f"sqlite:///{tmp_path / 'outbox.db'}"
    )
    needs = {"REDIS_URL": require_redis, "NATS_URL": require_nats, "AMQP_URL": require_rabbitmq}
    for name, require in needs.items():
        if name in sources:
            require()
    env.update(REDIS_URL=REDIS_URL, NATS_URL=NATS_URL, AMQP_URL=RABBITMQ_URL)
    if "WEBHOOK_" in sources:
        from outbox_admin.handlers.webhook import generate_secret

        hook: WebhookReceiver = request.getfixturevalue("receiver")
        env.update(WEBHOOK_URL=hook.url("/ok"), WEBHOOK_SECRET=generate_secret())
    entries = [{"path": str(b.path), "line": b.line, "source": b.source} for b in todo]
    _clean_shared_names(sources)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.docs_support"],
            input=json.dumps(entries),
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=PAGE_TIMEOUT,
        )
    finally:
        _clean_shared_names(sources)
    assert done.returncode == 0, f"{page_id(path)}: an example failed\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    _run_shell_blocks(path, tmp_path, env)


def _run_shell_blocks(path: Path, cwd: Path, env: dict[str, str]) -> None:
    """The page's shell blocks marked ``<!-- examples: run -->``, each line in bash, in the page's folder and
    environment (so on its database), with this Python's scripts (``outbox-admin``) first on ``PATH``."""
    env = {**env, "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])}
    for block in blocks(path):
        if not block.run:
            continue
        for offset, line in enumerate(block.source.splitlines()):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            done = subprocess.run(
                ["bash", "-c", line], capture_output=True, text=True, cwd=cwd, env=env, timeout=PAGE_TIMEOUT
            )
            where = f"{page_id(path)}:{block.line + offset}"
            assert done.returncode == 0, f"{where}: {line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_the_blocks_not_run_are_few_and_say_why() -> None:
    skipped = [(b.where, b.not_run_reason) for p in PAGES for b in python_blocks(p) if b.not_run_reason is not None]
    for where, reason in skipped:
        assert len(reason or "") >= 10, f"{where}: say why it is not run"
    assert len(skipped) <= MAX_NOT_RUN, "too many examples are not run:\n" + "\n".join(f"{w}: {r}" for w, r in skipped)
    unmarked = [b.where for p in PAGES for b in python_blocks(p) if "not run" in b.source.split("\n", 1)[0].lower()]
    assert not [w for w in unmarked if w not in {w for w, _ in skipped}], f"malformed '# not run:' markers: {unmarked}"


def test_every_page_has_been_collected() -> None:
    names = {page_id(p) for p in PAGES}
    assert {"README.md", "docs/index.md", "docs/getting-started.md", "docs/publishing.md"} <= names
    assert len(RUNNABLE_PAGES) >= 8


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_toml_examples_parse(path: Path) -> None:
    for block in blocks(path):
        if block.lang == "toml":
            try:
                tomllib.loads(block.source)
            except tomllib.TOMLDecodeError as exc:
                pytest.fail(f"{block.where}: {exc}")


def _cli_commands() -> dict[str, set[str]]:
    """Each outbox-admin command and its option names."""
    import typer.main

    from outbox_admin.cli import app

    group = typer.main.get_command(app)
    commands = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        commands[name] = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        commands[name].add("--help")
    return commands


def _cli_lines(path: Path) -> Iterator[tuple[Block, list[str]]]:
    for block in blocks(path):
        if block.lang not in ("bash", "console", "sh", "shell"):
            continue
        for line in block.source.splitlines():
            lexer = shlex.shlex(re.sub(r"^\$\s*", "", line), posix=True, punctuation_chars=True)
            lexer.whitespace_split = True  # with punctuation_chars: &&, |, ;, > are tokens of their own
            command: list[str] = []
            for token in [*lexer, ";"]:
                if token and set(token) <= set("&|;<>()"):
                    if command and command[0] == "outbox-admin":
                        yield block, command[1:]
                    command = []
                else:
                    command.append(token)


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_cli_examples_name_real_commands_and_options(path: Path) -> None:
    commands = _cli_commands()
    for block, words in _cli_lines(path):
        args = [w for w in words if w not in ("--debug",)]
        if not args or args[0] == "--help":
            continue
        name, rest = args[0], args[1:]
        assert name in commands, f"{block.where}: outbox-admin has no command {name!r}"
        for word in rest:
            if word.startswith("--"):
                option = word.split("=", 1)[0]
                assert option in commands[name], f"{block.where}: outbox-admin {name} has no option {option}"


def test_the_cli_help_of_the_docs_runs() -> None:
    """``outbox-admin --help`` in a process of its own, and ``COMMAND --help`` of every command the docs show."""
    done = subprocess.run(
        [sys.executable, "-m", "outbox_admin", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for name in _cli_commands():
        assert name in done.stdout
    from typer.testing import CliRunner

    from outbox_admin.cli import app

    shown = sorted({words[0] for path in PAGES for _, words in _cli_lines(path) if words and words[0] != "--help"})
    assert {"dispatch", "publish", "requeue", "stats"} <= set(shown)
    for name in shown:
        result = CliRunner().invoke(app, [name, "--help"])
        assert result.exit_code == 0, f"outbox-admin {name} --help: {result.output}"


def test_the_readme_is_short_with_the_two_quick_start_commands_and_a_15_line_example() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200
    commands = [b.source.strip() for b in blocks(README) if b.lang == "bash"][:2]
    assert commands == [
        "pip install -e '.[dashboard,postgres]' && streamlit run dashboard.py",
        "pip install -e '.[test]' && pytest",
    ]
    [example] = python_blocks(README)
    assert len(example.source.strip().splitlines()) <= 15
    assert (ROOT / "docs" / "img" / "console.png").stat().st_size < 300_000


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_relative_links_point_at_files(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:|#", target):
            continue
        file = (path.parent / target.split("#", 1)[0]).resolve()
        assert file.exists(), f"{page_id(path)}: the link {target} points at nothing"
