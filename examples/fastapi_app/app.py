"""The example: FastAPI on ``AsyncSession``, the outbox, and a page that updates live.

- ``POST /projects`` creates a Project and publishes ``PROJECT.CREATED`` in the same
  transaction (``apublish_outbox_event``): the event exists only if the project does.
- The app's lifespan runs a ``DispatcherService`` whose one handler is the
  ``BrowserBusSink``; ``/bus`` is the ``message_bus_app`` the page listens to.
- ``GET /`` is a React page (no build step) listing the org's projects; it updates
  through ``useMessageBus("PROJECT.*", ...)``, also for projects created by other
  tabs, other web processes, or any program that publishes to the same outbox.

The sign-in is a stand-in: the org comes from a cookie set by ``/?org=NAME``. A real
application reads it from its session in ``current_org`` and ``authorize``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.concurrency import run_in_threadpool

from outbox_admin import Dispatcher, DispatcherService, init_db, make_engine
from outbox_admin.aio import apublish_outbox_event
from outbox_admin.db import default_database_url, make_async_engine
from outbox_admin.web import BrowserBusSink, Subscriber, message_bus_app

from . import vendor
from .models import MAX_NAME, Base, Project

ORG_COOKIE = "example_org"
DEFAULT_ORG = "acme"
_ORG_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def current_org(request: Request) -> str:
    """The signed-in org (here: a cookie; a real app reads its session)."""
    org = request.cookies.get(ORG_COOKIE, DEFAULT_ORG)
    return org if _ORG_PATTERN.fullmatch(org) else DEFAULT_ORG


def authorize(request: Request) -> Subscriber:
    """Who the bus stream is for: the page's org, and only project events."""
    return Subscriber(org_id=current_org(request), event_types=("PROJECT.*",))


def check_name(raw: str) -> str:
    name = " ".join(raw.split())
    if not name:
        raise HTTPException(422, "a project needs a name")
    if len(name) > MAX_NAME:
        raise HTTPException(422, f"a project name has at most {MAX_NAME} characters")
    return name


async def create_project(session: AsyncSession, org_id: str, name: str) -> Project:
    """The business change and its event, in one transaction."""
    async with session.begin():
        project = Project(org_id=org_id, name=name)
        session.add(project)
        await session.flush()  # the id, for the event
        await apublish_outbox_event(
            session,
            org_id=org_id,
            event_type="PROJECT.CREATED",
            entity_type="project",
            entity_id=project.id,
            payload=project.as_json(),
        )
    return project


def create_app(database_url: str | None = None, *, interval_seconds: float = 30.0) -> FastAPI:
    """The example app on ``database_url`` (default: ``OUTBOX_DATABASE_URL``, else ``outbox.db`` here)."""
    url = database_url or default_database_url()
    engine = make_engine(url)  # the dispatcher's and the bus's (sync) engine
    async_engine = make_async_engine(url)
    sessions = async_sessionmaker(async_engine, expire_on_commit=False)
    bus = message_bus_app(engine, authorize=authorize)
    service = DispatcherService(Dispatcher(engine, [BrowserBusSink(engine)]), interval_seconds=interval_seconds)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(init_db, engine)
        await run_in_threadpool(Base.metadata.create_all, engine)
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)
            bus.state.follower.close()
            await async_engine.dispose()
            engine.dispose()

    app = FastAPI(title="outbox_admin example: projects", lifespan=lifespan)
    app.mount("/bus", bus)

    @app.get("/", response_class=HTMLResponse)
    async def page(request: Request, org: str | None = None) -> Response:
        if org is not None:  # the stand-in sign-in: remember the org, then show the page without the query
            if not _ORG_PATTERN.fullmatch(org):
                raise HTTPException(400, "org: 1 to 64 letters, digits, '-' or '_'")
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(ORG_COOKIE, org, httponly=True, samesite="lax")
            return response
        html = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/static/projects.js")
    async def page_script() -> Response:
        script = resources.files(__package__).joinpath("static/projects.js").read_bytes()
        return Response(script, media_type="text/javascript; charset=utf-8")

    @app.get("/api/projects")
    async def list_projects(request: Request) -> dict[str, object]:
        org_id = current_org(request)
        async with sessions() as session:
            rows = await session.scalars(select(Project).where(Project.org_id == org_id).order_by(Project.id))
            return {"org": org_id, "projects": [row.as_json() for row in rows]}

    @app.post("/projects")
    async def add_project(request: Request, name: str = Form(..., max_length=4 * MAX_NAME)) -> Response:
        name = check_name(name)
        async with sessions() as session:
            project = await create_project(session, current_org(request), name)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(project.as_json(), status_code=201)
        return RedirectResponse("/", status_code=303)  # a browser without JavaScript

    @app.get("/vendor/{name}")
    async def vendored(name: str) -> Response:
        if name not in vendor.ASSETS:
            raise HTTPException(404)
        try:
            path = await run_in_threadpool(vendor.asset_path, name)
        except vendor.AssetUnavailable:
            return RedirectResponse(vendor.ASSETS[name].cdn_url, status_code=307)
        return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    app.state.service = service
    return app
