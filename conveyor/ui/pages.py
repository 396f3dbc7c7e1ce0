"""The HTML pages of ``conveyor ui``, rendered from Jinja2 templates (autoescaped).

Each page reads through the same functions as its ``/api/`` twin and embeds that JSON
(``|tojson``, which escapes ``<``, ``>`` and ``&``) for ``static/conveyor.js`` to keep it
live over Server-Sent Events. Pages run no SQL of their own.
"""

from __future__ import annotations

import datetime as dt
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from conveyor.topology.model import PRIORITIES
from conveyor.ui import cluster, deadletters, queries, scheduled
from conveyor.ui.api import overview_data, state_of
from conveyor.ui.security import csrf_token, set_csrf_cookie


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("conveyor.ui", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ms"] = _format_ms
    env.filters["seconds"] = _format_seconds
    env.filters["when"] = _format_when
    env.filters["count"] = _format_count
    return env


NONE = "\u2013"  # an en dash where a figure is unknown


def _format_ms(value: float | None) -> str:
    return NONE if value is None else f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _format_seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def _format_when(value: str | None) -> str:
    if not value:
        return ""
    return dt.datetime.fromisoformat(value).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _format_count(value: int | None, cap: int = queries.COUNT_CAP) -> str:
    if value is None:
        return NONE
    return f"{value:,}+" if value >= cap else f"{value:,}"


ENV = _environment()


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """Renders a page with what every page needs (CSRF token, read-only flag, tenant)."""
    ui = state_of(request)
    token, new = csrf_token(request)
    html = ENV.get_template(template).render(
        request_path=request.url.path,
        csrf_token=token,
        read_only=ui.options.read_only,
        tenant=ui.options.tenant,
        priorities=PRIORITIES,
        states=queries.STATES,
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    if new:
        set_csrf_cookie(response, token, secure=ui.options.secure_cookies)
    return response


async def overview_page(request: Request) -> Response:
    return render(request, "overview.html", data=await overview_data(state_of(request)))


async def jobs_page(request: Request) -> Response:
    params = dict(request.query_params)
    f = queries.JobFilter.from_params(params)
    result = await queries.search_jobs(state_of(request).pool, f, cursor=params.get("cursor"))
    next_link = None
    if result["next"]:
        next_link = "/jobs?" + urlencode({**f.as_params(), "cursor": result["next"]})
    return render(request, "jobs.html", filter=f.as_params(), result=result, next_link=next_link)


async def job_page(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    job = await queries.job_detail(state_of(request).pool, job_id)
    if job is None:
        return render(request, "error.html", 404, message=f"No job {job_id} is recorded.")
    return render(request, "job.html", job=job)


async def batch_page(request: Request) -> Response:
    batch = await queries.batch_detail(state_of(request).pool, request.path_params["batch_id"])
    return render(request, "batch.html", batch=batch)


async def dlq_page(request: Request) -> Response:
    params = dict(request.query_params)
    f = deadletters.DlqFilter.from_params(params)
    ui = state_of(request)
    result = await deadletters.list_entries(ui.pool, f, cursor=params.get("cursor"))
    run = ui.replays.get(params.get("run", ""))
    next_link = None
    if result["next"]:
        next_link = "/dlq?" + urlencode({**f.as_params(), "cursor": result["next"]})
    return render(
        request,
        "dlq.html",
        filter=f.as_params(),
        result=result,
        next_link=next_link,
        run=None if run is None else run.to_json(),
        reasons=deadletters.REASONS,
    )


async def dlq_entry_page(request: Request) -> Response:
    ui = state_of(request)
    entry = await deadletters.entry_detail(ui.pool, int(request.path_params["entry_id"]))
    return render(request, "dlq_entry.html", entry=entry)


async def workers_page(request: Request) -> Response:
    rows = await cluster.workers(state_of(request).pool)
    return render(request, "workers.html", workers=rows)


async def topology_page(request: Request) -> Response:
    return render(request, "topology.html", topology=await state_of(request).cluster.topology())


async def scheduled_page(request: Request) -> Response:
    return render(request, "scheduled.html", data=await scheduled.scheduled(state_of(request).pool))


def routes() -> list[BaseRoute]:
    """The HTML pages and the static files."""
    static = resources.files("conveyor.ui") / "static"
    return [
        Route("/", overview_page),
        Route("/jobs", jobs_page),
        Route("/jobs/{job_id}", job_page),
        Route("/batches/{batch_id}", batch_page),
        Route("/dlq", dlq_page),
        Route("/dlq/{entry_id:int}", dlq_entry_page),
        Route("/workers", workers_page),
        Route("/topology", topology_page),
        Route("/scheduled", scheduled_page),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
