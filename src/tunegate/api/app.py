"""The FastAPI app factory: wires settings, the database, the routers of every stage, error
handling and the background services (job supervisor, serving engine) into one app."""

from __future__ import annotations

import asyncio
import importlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from tunegate import __version__
from tunegate.api import errors, openapi
from tunegate.api.guard import Guard
from tunegate.auth import ensure_admin_key
from tunegate.catalog.prepare import prepare_default_model
from tunegate.catalog.registry import preload_libraries
from tunegate.db import open_database
from tunegate.settings import Settings
from tunegate.threads import run_with_cores

log = logging.getLogger("tunegate")

# Stage routers, left to right along the data flow. Each module exposes `router`.
ROUTERS = [
    "tunegate.catalog.router",
    "tunegate.files.router",
    "tunegate.files.uploads_router",
    "tunegate.jobs.router",
    "tunegate.models.router",
    "tunegate.models.permissions_router",
    "tunegate.serve.router",
    "tunegate.safety.router",
    "tunegate.batches.router",
    "tunegate.graders.router",
    "tunegate.evals.router",
    "tunegate.api.admin",
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.ensure_dirs()
    from tunegate.storage import open_storage

    open_storage(settings).check()  # an unknown scheme or an unreachable store stops the start, named
    db = open_database(settings.db_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.bootstrap_admin:
            key = ensure_admin_key(db, settings.data_dir)
            if key:
                print(f"Created a local admin API key (saved in {settings.data_dir / 'admin_key'}):\n{key}", flush=True)
        # Before any service starts a thread: see preload_libraries.
        await asyncio.to_thread(preload_libraries)
        # The packaged model's one-time conversion happens here, before the server answers, never in a request.
        # On every core, in a thread that ends with it: a pool left in the event loop's thread pool would slow the engine.
        await asyncio.to_thread(run_with_cores, prepare_default_model, settings, lambda m: print(m, flush=True))
        services = [s for s in app.state.services if settings.start_workers or not getattr(s, "is_worker", False)]
        for service in services:
            await service.start()
        try:
            yield
        finally:
            for service in reversed(services):
                await service.stop()

    # /docs and /redoc would load their scripts from a CDN; the machine may be offline and a page that runs third-party
    # script beside the API's keys is not wanted. The OpenAPI document stays at /openapi.json.
    app = FastAPI(title="tunegate", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.db = db
    app.state.services = []  # objects with async start()/stop(), appended by stages' `setup(app)`
    errors.install(app)

    # Authentication before the body, streamed body limits and timeouts, and the headers every response carries.
    app.add_middleware(Guard, settings=settings, db=db)

    for name in ROUTERS:
        module = importlib.import_module(name)
        if hasattr(module, "setup"):
            module.setup(app)
        app.include_router(module.router)

    @app.get("/health", include_in_schema=False)
    def health():
        return JSONResponse({"status": "ok", "version": __version__})

    openapi.install(app)

    from tunegate.dashboard import mount

    mount(app)
    return app
