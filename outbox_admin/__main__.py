"""``python -m outbox_admin`` runs the CLI."""

from .cli import main

main()
