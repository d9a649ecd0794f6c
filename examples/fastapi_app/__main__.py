"""``python -m examples.fastapi_app [--port 8000] [--database-url URL]``: serve the example with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from .app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.fastapi_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--database-url", help="default: OUTBOX_DATABASE_URL, else outbox.db in this directory")
    parser.add_argument("--interval", type=float, default=30.0, help="dispatcher interval, seconds (default 30)")
    args = parser.parse_args(argv)
    app = create_app(args.database_url, interval_seconds=args.interval)
    print(f"outbox_admin example: http://{args.host}:{args.port}/  (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
