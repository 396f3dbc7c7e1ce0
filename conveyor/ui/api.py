"""The JSON API under ``/api/``, its Server-Sent Events streams, and the actions.

Every GET returns what the page of the same name shows (the same query functions);
POSTs (cancel, replay) need the CSRF token and are refused in read-only mode. An action
posted by a page's form answers with a redirect back to the page; one posted by a script
answers JSON. Errors are JSON ``{"error": "..."}`` with 400 (bad filter), 403 (CSRF,
read-only), 404, 409 (replayed already) or 503 (Postgres unavailable).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from conveyor.errors import (
    ConveyorError,
    DatabaseUnavailableError,
    DlqEntryNotFound,
    ReplayRefused,
    ScheduleNotFound,
)
from conveyor.jobstore import parse_job_id
from conveyor.ui import cluster, deadletters, overview, queries, scheduled
from conveyor.ui.security import csrf_ok, csrf_token, form_fields, set_csrf_cookie
from conveyor.ui.state import UiState

KEEPALIVE_SECONDS = 15.0


def state_of(request: Request) -> UiState:
    """The UI's shared state."""
    ui: UiState = request.app.state.ui
    return ui


def error(status: int, message: str) -> JSONResponse:
    """A JSON error answer."""
    return JSONResponse({"error": message}, status_code=status)


async def overview_data(ui: UiState) -> dict[str, Any]:
    """The overview with the Kafka lag folded in (shared by the page, API and stream)."""
    lag = await ui.cluster.lag()
    data = await overview.overview(ui.pool, ui.cluster.lag_per_priority(lag))
    data["lag_available"] = lag["available"]
    return data


async def get_overview(request: Request) -> Response:
    return JSONResponse(await overview_data(state_of(request)))


async def get_jobs(request: Request) -> Response:
    params = dict(request.query_params)
    f = queries.JobFilter.from_params(params)
    limit = _int(params.get("limit"), queries.PAGE_SIZE)
    return JSONResponse(
        await queries.search_jobs(
            state_of(request).pool, f, cursor=params.get("cursor"), limit=limit
        )
    )


async def get_job(request: Request) -> Response:
    job = await queries.job_detail(state_of(request).pool, request.path_params["job_id"])
    if job is None:
        return error(404, f"no job {request.path_params['job_id']} is recorded")
    return JSONResponse(job)


async def get_batch(request: Request) -> Response:
    ui = state_of(request)
    return JSONResponse(await queries.batch_detail(ui.pool, request.path_params["batch_id"]))


async def get_dlq(request: Request) -> Response:
    params = dict(request.query_params)
    f = deadletters.DlqFilter.from_params(params)
    limit = _int(params.get("limit"), queries.PAGE_SIZE)
    ui = state_of(request)
    return JSONResponse(
        await deadletters.list_entries(ui.pool, f, cursor=params.get("cursor"), limit=limit)
    )


async def get_dlq_entry(request: Request) -> Response:
    ui = state_of(request)
    return JSONResponse(await deadletters.entry_detail(ui.pool, _entry_id(request)))


async def get_replay_run(request: Request) -> Response:
    run = state_of(request).replays.get(request.path_params["run_id"])
    if run is None:
        return error(404, f"no bulk replay {request.path_params['run_id']} in this UI process")
    return JSONResponse(run.to_json())


async def get_workers(request: Request) -> Response:
    return JSONResponse({"workers": await cluster.workers(state_of(request).pool)})


async def get_topology(request: Request) -> Response:
    return JSONResponse(await state_of(request).cluster.topology())


async def get_scheduled(request: Request) -> Response:
    return JSONResponse(await scheduled.scheduled(state_of(request).pool))


async def post_schedule_pause(request: Request) -> Response:
    return await _pause(request, paused=True)


async def post_schedule_resume(request: Request) -> Response:
    return await _pause(request, paused=False)


async def _pause(request: Request, *, paused: bool) -> Response:
    refused = await _guard(request)
    if refused is not None:
        return refused
    name = request.path_params["name"]
    await scheduled.set_paused(state_of(request).pool, name, paused)
    if _wants_html(request):
        return RedirectResponse("/scheduled", status_code=303)
    return JSONResponse({"name": name, "paused": paused})


async def get_csrf(request: Request) -> Response:
    """The CSRF token scripts send back in ``X-CSRF-Token`` (and its cookie)."""
    token, new = csrf_token(request)
    response = JSONResponse({"csrf_token": token, "header": "X-CSRF-Token"})
    if new:
        set_csrf_cookie(response, token, secure=state_of(request).options.secure_cookies)
    return response


def _int(text: str | None, default: int) -> int:
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise queries.QueryError(f"expected a whole number, got {text!r}") from None


def _entry_id(request: Request) -> int:
    return _int(request.path_params["entry_id"], 0)


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/")


async def _guard(request: Request) -> Response | None:
    """Refuses an action in read-only mode or without the CSRF token."""
    if state_of(request).options.read_only:
        return error(403, "this UI is read-only (conveyor ui --read-only)")
    if not await csrf_ok(request):
        return error(403, "missing or wrong CSRF token; reload the page (scripts: GET /api/csrf)")
    return None


async def post_cancel(request: Request) -> Response:
    refused = await _guard(request)
    if refused is not None:
        return refused
    try:
        job_id = parse_job_id(request.path_params["job_id"])
    except ValueError as exc:
        return error(400, str(exc))
    state = await state_of(request).store.cancel(job_id, reason="cancelled from conveyor ui")
    if _wants_html(request):
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)
    return JSONResponse({"job_id": job_id, "state": state})


async def post_replay(request: Request) -> Response:
    refused = await _guard(request)
    if refused is not None:
        return refused
    ui = state_of(request)
    entry_id = _entry_id(request)
    job_id = await deadletters.replay_one(ui.pool, ui.settings, entry_id)
    if _wants_html(request):
        return RedirectResponse(f"/dlq/{entry_id}", status_code=303)
    return JSONResponse({"entry_id": entry_id, "job_id": job_id})


async def post_replay_matching(request: Request) -> Response:
    refused = await _guard(request)
    if refused is not None:
        return refused
    ui = state_of(request)
    if request.headers.get("content-type", "").startswith("application/json"):
        params = {k: str(v) for k, v in (await request.json()).items()}
    else:
        params = await form_fields(request)
    f = deadletters.DlqFilter.from_params(params)
    run = await ui.replays.start(ui.pool, ui.settings, f)
    if _wants_html(request):
        query = urlencode({**f.as_params(), "run": run.id})
        return RedirectResponse(f"/dlq?{query}", status_code=303)
    return JSONResponse(run.to_json(), status_code=202)


async def _events(
    request: Request,
    read: Callable[[], Awaitable[dict[str, Any] | None]],
    done: Callable[[dict[str, Any]], bool],
) -> AsyncIterator[str]:
    """Sends ``read()`` whenever it changes, until ``done`` or the client leaves."""
    ui = state_of(request)
    limit = _int(request.query_params.get("events"), 0)
    sent, last, quiet = 0, None, 0.0
    while not await request.is_disconnected():
        data = await read()
        text = json.dumps(data, separators=(",", ":"))
        if text != last:
            last, quiet = text, 0.0
            sent += 1
            yield f"data: {text}\n\n"
            if data is None or done(data) or (limit and sent >= limit):
                yield "event: end\ndata: {}\n\n"
                return
        elif quiet >= KEEPALIVE_SECONDS:
            quiet = 0.0
            yield ": keepalive\n\n"
        await asyncio.sleep(ui.options.stream_interval)
        quiet += ui.options.stream_interval


def _stream(source: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        source,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def stream_overview(request: Request) -> Response:
    ui = state_of(request)
    return _stream(_events(request, lambda: overview_data(ui), lambda _d: False))


async def stream_job(request: Request) -> Response:
    ui = state_of(request)
    try:
        job_id = parse_job_id(request.path_params["job_id"])
    except ValueError as exc:
        return error(400, str(exc))

    async def read() -> dict[str, Any] | None:
        job = await queries.job_detail(ui.pool, job_id)
        return {"job_id": job_id, "state": "unknown"} if job is None else job

    return _stream(_events(request, read, lambda d: d.get("state") in queries.FINAL))


async def stream_replay_run(request: Request) -> Response:
    run = state_of(request).replays.get(request.path_params["run_id"])
    if run is None:
        return error(404, f"no bulk replay {request.path_params['run_id']} in this UI process")

    async def read() -> dict[str, Any]:
        return run.to_json()

    return _stream(_events(request, read, lambda d: bool(d["finished"])))


def routes() -> list[Route]:
    """The ``/api/`` routes, and the form actions the pages post to."""
    return [
        Route("/api/overview", get_overview),
        Route("/api/jobs", get_jobs),
        Route("/api/jobs/{job_id}", get_job),
        Route("/api/jobs/{job_id}/cancel", post_cancel, methods=["POST"]),
        Route("/api/batches/{batch_id}", get_batch),
        Route("/api/dlq", get_dlq),
        Route("/api/dlq/replay", post_replay_matching, methods=["POST"]),
        Route("/api/dlq/replays/{run_id}", get_replay_run),
        Route("/api/dlq/{entry_id}", get_dlq_entry),
        Route("/api/dlq/{entry_id}/replay", post_replay, methods=["POST"]),
        Route("/api/workers", get_workers),
        Route("/api/topology", get_topology),
        Route("/api/scheduled", get_scheduled),
        Route("/api/schedules/{name:path}/pause", post_schedule_pause, methods=["POST"]),
        Route("/api/schedules/{name:path}/resume", post_schedule_resume, methods=["POST"]),
        Route("/api/csrf", get_csrf),
        Route("/api/stream/overview", stream_overview),
        Route("/api/stream/jobs/{job_id}", stream_job),
        Route("/api/stream/dlq/replays/{run_id}", stream_replay_run),
        Route("/jobs/{job_id}/cancel", post_cancel, methods=["POST"]),
        Route("/dlq/replay", post_replay_matching, methods=["POST"]),
        Route("/dlq/{entry_id}/replay", post_replay, methods=["POST"]),
        Route("/schedules/{name:path}/pause", post_schedule_pause, methods=["POST"]),
        Route("/schedules/{name:path}/resume", post_schedule_resume, methods=["POST"]),
    ]


def error_status(exc: ConveyorError) -> int:
    """The HTTP status of a conveyor error raised by a handler."""
    if isinstance(exc, queries.QueryError):
        return 400
    if isinstance(exc, DlqEntryNotFound | ScheduleNotFound):
        return 404
    if isinstance(exc, ReplayRefused):
        return 409
    if isinstance(exc, DatabaseUnavailableError):
        return 503
    return 500
