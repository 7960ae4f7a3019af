"""The platform service: `python -m edgecloud.platform.server CONFIG.json`.

`create_app(config)` builds the FastAPI app (API, OpenAPI at /docs, readiness task);
`serve(config)` runs it under uvicorn until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from edgecloud.errors import FileValidationError, UserError
from edgecloud.log import get_logger
from edgecloud.platform.api import api, root
from edgecloud.platform.api_apps import apps_api
from edgecloud.platform.api_commands import commands_api
from edgecloud.platform.apps import AppConflict, AppManager, AppNotFound, NoInfrastructure
from edgecloud.platform.core import AssignmentNotifier, Platform, PlatformConfig
from edgecloud.platform.monitor import watch_readiness
from edgecloud.platform.orchestrator import PlacementError
from edgecloud.schema import format_loc
from edgecloud.service import run_service

log = get_logger("platform")

__all__ = ["PlatformConfig", "Platform", "create_app", "serve", "USER_ERROR_STATUS"]

USER_ERROR_STATUS: list[tuple[type[UserError], int, str]] = [
    (AppNotFound, 404, ""),
    (AppConflict, 409, ""),
    (NoInfrastructure, 409, ""),
    (PlacementError, 409, "no deployment plan: "),
    (FileValidationError, 422, ""),
    (UserError, 400, ""),
]
"""The one mapping of user errors to HTTP answers (most specific class first):
`{"detail": "<prefix><message>"}` with the status."""


def create_app(config: PlatformConfig) -> FastAPI:
    """The platform as an ASGI app; `app.state.platform` is its `Platform`."""
    platform = Platform(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        platform.notifier.bind(asyncio.get_running_loop())
        stop = asyncio.Event()
        task = asyncio.create_task(watch_readiness(platform, stop))
        log.info("platform started", url=config.listen.url("http"),
                 heartbeat_s=config.heartbeat_interval_s, missed_beats=config.missed_beats)
        try:
            yield
        finally:
            platform.notifier.wake_all()
            stop.set()
            await task
            app.state.apps.close()
            platform.close()

    app = FastAPI(title="edgecloud platform", version="1", lifespan=lifespan,
                  description="Control plane of edgecloud: infrastructure, nodes, "
                              "tokens, applications.")
    app.state.platform = platform
    app.state.apps = AppManager(platform)
    app.include_router(root)
    app.include_router(api)
    app.include_router(apps_api)
    app.include_router(commands_api)
    # Starlette types every handler as taking an Exception; each of these takes the class it
    # is registered for (which is what Starlette passes it), hence ignore[arg-type].
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(UserError, _user_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
    return app


async def _user_error(request: Request, exc: UserError) -> JSONResponse:
    # Subclasses are looked up here, not registered one by one, so the order of
    # USER_ERROR_STATUS (most specific first) decides.
    status, prefix = next((code, pre) for cls, code, pre in USER_ERROR_STATUS
                          if isinstance(exc, cls))
    return JSONResponse({"detail": prefix + str(exc)}, status_code=status)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # One error shape for every failure: {"detail": "<readable text>"}.
    problems = [f"{format_loc(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
    return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, status_code=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error", path=request.url.path)
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


class _Server(uvicorn.Server):
    """uvicorn that releases long-polls at once on a signal and then simply returns.

    Plain uvicorn re-raises the captured signal after shutdown; a service's `serve` must
    return instead (the service contract).
    """

    def __init__(self, config: uvicorn.Config, notifier: AssignmentNotifier) -> None:
        super().__init__(config)
        self._notifier = notifier

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._notifier.wake_all()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def serve(config: PlatformConfig) -> None:
    """Run the platform until SIGTERM/SIGINT."""
    try:
        app = create_app(config)
    except UserError as exc:
        log.error("cannot start", error=str(exc))
        raise SystemExit(2) from None
    uv = uvicorn.Config(app, host=config.listen.host, port=config.listen.port,
                        log_config=None, access_log=False, lifespan="on",
                        timeout_graceful_shutdown=5)
    _Server(uv, app.state.platform.notifier).run()
    log.info("platform stopped")


if __name__ == "__main__":
    run_service(PlatformConfig, serve)
