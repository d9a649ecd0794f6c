"""An example application: FastAPI on ``AsyncSession`` publishing through the outbox to live browser pages.

Run it from the repository root with ``python -m examples.fastapi_app`` (README.md in
this directory).
"""
