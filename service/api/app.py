"""`create_app(settings)`: the FastAPI application with its supervisor in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.api.guard import RequestGuard
from service.api.metrics import Metrics
from service.api.page import router as page_router
from service.api.problems import install_problem_handlers
from service.api.routes import router
from service.api.security import Authenticator, KubernetesReviews, TokenFile
from service.config import Settings
from service.runner.clusters import ClusterPool
from service.runner.events import EventHub
from service.runner.supervisor import Supervisor
from service.store import SessionRepository, make_engine, upgrade_schema
from service.upstream import Cluster

log = logging.getLogger("podgate.api")

DESCRIPTION = """REST-controlled port forwarding for Kubernetes: create, list and delete
forward sessions (`oc port-forward`, as a restart-safe service)."""


def create_app(settings: Settings, *, migrate: Callable[[str], None] = upgrade_schema) -> FastAPI:
    """``migrate`` brings the schema to head at start-up (``podgate serve`` passes
    ``upgrade_schema_isolated``, which runs it in a child process).

    Raises ``TokenFileError`` for a token file that cannot be used.
    """
    tokens = TokenFile(settings.token_file) if settings.token_file is not None else None
    pool: list[ClusterPool] = []  # the lifespan's, once it runs

    async def default_cluster() -> Cluster:
        return await pool[0](None)

    reviews = KubernetesReviews(default_cluster) if settings.auth == "kubernetes" else None
    authenticator = Authenticator(tokens, reviews)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        demo = None
        kubeconfig = settings.kubeconfig
        if settings.demo:
            from service.agent.demo import start_demo_agent

            demo, kubeconfig = await start_demo_agent(settings.data_dir)
        await asyncio.to_thread(migrate, settings.db_url)
        engine = make_engine(settings.db_url)
        clusters = ClusterPool(
            kubeconfig, settings.context, agent_kubeconfig=settings.agent_kubeconfig
        )
        pool[:] = [clusters]
        log.info("authentication: %s", authenticator.describe())
        supervisor = Supervisor(
            SessionRepository(engine),
            clusters,
            settings,
            events=EventHub(settings.event_buffer_size, settings.event_queue_size),
            agents=clusters.agent,
        )
        app.state.supervisor = supervisor
        metrics.attach(supervisor)
        await supervisor.start()
        try:
            yield
        finally:
            await supervisor.stop()
            await clusters.close()
            engine.dispose()
            if demo is not None:
                await demo.shutdown(drain_timeout=1.0)

    app = FastAPI(
        title="podgate",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    # Host, Origin (and CORS for the listed origins) and body size, before any route.
    app.add_middleware(RequestGuard, settings=settings)
    app.state.settings = settings
    app.state.authenticator = authenticator
    app.state.metrics = metrics
    install_problem_handlers(app)
    app.include_router(router)
    app.include_router(page_router)  # the web page at / (not in the OpenAPI document)
    return app
