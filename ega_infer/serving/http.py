"""The HTTP API (FastAPI; run by uvicorn in ``ega-infer serve``).

``POST /v1/slates`` serves ``{"requests": [...], "config": {...}, "deadline_ms": ...}`` as one
batch and answers ``{"slates": [...]}`` (``schemas.py``). ``GET /health`` (the process is up),
``GET /ready`` (weights, catalog, warm-up; 503 until then), ``GET /metrics`` (Prometheus).
Admin (``admin.py``; bearer token): ``GET /admin/catalog``, ``POST /admin/catalog/load``,
``/admin/catalog/bids``, ``/admin/catalog/remove``, ``/admin/weights``.

Every error answers ``{"error": {"code", "field", "message"}}``: 400 a field-named input
problem (a body where every request is invalid also carries the per-request ``slates``), 401 /
403 admin auth, 404 admin off or no such route, 413 body over ``max_body_bytes``, 422 a body
that does not match an endpoint's schema (the field path named), 429 queue full (with
``Retry-After``), 503 not ready or closing, 504 every slate of the body missed its deadline. A
request that fails validation gets its own error slate; the rest of the body is served.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..exceptions import ConfigError, EgaInferError, FieldError, QueueFullError, ServerClosedError
from ..slate import Slate
from .admin import AdminConfig, CatalogUpdates, inside
from .backend import Backend
from .metrics import CONTENT_TYPE, Metrics
from .schemas import (ErrorResponse, SlatesBody, SlatesResponse, config_from_json, request_from_json,
                      slate_to_json)
from .server import check_deadline, is_deadline_error

__all__ = ["create_app", "DEFAULT_MAX_BODY_BYTES"]

DEFAULT_MAX_BODY_BYTES = 8 << 20
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 422, 429, 503, 504)}


class PathBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str


class BidsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_ids: list[int]
    bids: list[float]


class RemoveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_ids: list[int]


class _Refused(Exception):
    def __init__(self, code: int, field: str | None, message: str, headers: dict | None = None,
                 extra: dict | None = None) -> None:
        self.code, self.field, self.message, self.headers, self.extra = code, field, message, headers, extra


def _error(code: int, field: str | None, message: str, headers: dict | None = None,
           extra: dict | None = None) -> JSONResponse:
    if field and not message.startswith(field):
        message = f"{field}: {message}"
    return JSONResponse({"error": {"code": code, "field": field, "message": message}, **(extra or {})},
                        status_code=code, headers=headers)


def create_app(backend: Backend, admin: AdminConfig | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    admin = admin or AdminConfig()
    metrics = Metrics(backend.stats)
    updates = CatalogUpdates(backend)
    app = FastAPI(title="ega_infer", version=__import__("ega_infer").__version__,
                  description="Generative advertising slates: ads, creatives, positions, payments.")
    app.state.backend, app.state.metrics = backend, metrics

    app.add_middleware(_Counted, metrics=metrics, max_body_bytes=max_body_bytes)

    @app.exception_handler(_Refused)
    async def refused(_, exc: _Refused):
        return _error(exc.code, exc.field, exc.message, exc.headers, exc.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid body"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".") or "body"
        return _error(422, field, f"{field}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, exc: StarletteHTTPException):
        return _error(exc.status_code, None, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(_, exc: Exception):  # never a traceback on the wire, never a dead process
        return _error(500, None, f"internal error ({type(exc).__name__})")

    @app.post("/v1/slates", response_model=SlatesResponse, responses=_ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/SlatesBody"}}}}})
    async def slates(request: HTTPRequest) -> Response:
        body = await _read_json(request, max_body_bytes)
        ready, detail = backend.ready()
        if not ready:
            raise _Refused(503, None, f"not ready: {detail}", {"Retry-After": "1"})
        requests, parsed_errors, config, deadline_ms = _parse(body, backend)
        try:
            if requests:
                served = await _with_deadline(backend.slates([r for _, r in requests], config, deadline_ms),
                                              deadline_ms)
            else:
                served = []
        except QueueFullError as exc:
            raise _Refused(429, None, str(exc), {"Retry-After": str(backend.retry_after_s())}) from None
        except ServerClosedError as exc:
            raise _Refused(503, None, str(exc)) from None
        except asyncio.TimeoutError:
            served = [Slate(getattr(r, "request_id", "") if isinstance(getattr(r, "request_id", ""), str) else "",
                            error=f"deadline_ms: no slate within the deadline of {deadline_ms} ms")
                      for _, r in requests]
        except FieldError as exc:
            raise _Refused(400, exc.field, str(exc)) from None
        out: list[Slate | None] = [None] * (len(requests) + len(parsed_errors))
        for (i, _), slate in zip(requests, served):
            out[i] = slate
        for i, slate in parsed_errors.items():
            out[i] = slate
        metrics.observe(out)
        payload = {"slates": [slate_to_json(s) for s in out]}
        if all(is_deadline_error(s) for s in out):
            return _error(504, "deadline_ms", out[0].error, extra=payload)
        if all(not s.ok and not is_deadline_error(s) for s in out) and all(
                s.error.startswith("requests[") for s in out):
            first = out[0].error
            return _error(400, first.split(":", 1)[0], first, extra=payload)
        return Response(json.dumps(payload), media_type="application/json")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"model": ErrorResponse}})
    async def ready() -> Response:
        ok, detail = backend.ready()
        if not ok:
            return _error(503, None, f"not ready: {detail}", {"Retry-After": "1"}, extra={"ready": False, **detail})
        return JSONResponse({"ready": True, **detail})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    # -- admin -------------------------------------------------------------------------------
    def authorize(request: HTTPRequest) -> None:
        if not admin.enabled:
            raise _Refused(404, None, "admin endpoints are off (no admin token configured)")
        code = admin.authorized(request.headers.get("authorization"))
        if code == 401:
            raise _Refused(401, "Authorization", "missing; expected 'Authorization: Bearer <admin token>'",
                           {"WWW-Authenticate": "Bearer"})
        if code == 403:
            raise _Refused(403, "Authorization", "the bearer token is wrong")

    async def update(fn, *args) -> dict:
        try:
            version, catalog = await run_in_threadpool(fn, *args)
        except FieldError as exc:
            raise _Refused(400, exc.field, str(exc)) from None
        except EgaInferError as exc:  # a file that cannot be read
            raise _Refused(400, "path", str(exc)) from None
        return {"catalog_version": version, "items": len(catalog), "ads": catalog.num_ads}

    @app.get("/admin/catalog")
    async def catalog_info(request: HTTPRequest) -> dict:
        authorize(request)
        catalog = backend.catalog()
        return {"catalog_version": backend.stats().get("catalog_version", ""),
                "items": 0 if catalog is None else len(catalog), "ads": 0 if catalog is None else catalog.num_ads}

    @app.post("/admin/catalog/load")
    async def load_catalog(request: HTTPRequest, body: PathBody) -> dict:
        authorize(request)
        return await update(updates.load, admin.catalog_dir, body.path)

    @app.post("/admin/catalog/bids")
    async def update_bids(request: HTTPRequest, body: BidsBody) -> dict:
        authorize(request)
        return await update(updates.bids, body.item_ids, body.bids)

    @app.post("/admin/catalog/remove")
    async def remove_items(request: HTTPRequest, body: RemoveBody) -> dict:
        authorize(request)
        return await update(updates.remove, body.item_ids)

    @app.post("/admin/weights")
    async def load_weights(request: HTTPRequest, body: PathBody) -> dict:
        authorize(request)
        try:
            path = inside(admin.weights_dir, body.path, "path")
            version = await run_in_threadpool(backend.set_weights, Path(path))
        except FieldError as exc:
            raise _Refused(400, exc.field, str(exc)) from None
        except EgaInferError as exc:
            raise _Refused(400, "path", str(exc)) from None
        return {"model_version": version}

    schema = app.openapi

    def openapi() -> dict:  # the slate body is read by hand (per-request errors): publish its schema
        if app.openapi_schema is None:
            spec = schema()
            defs = SlatesBody.model_json_schema(ref_template="#/components/schemas/{model}")
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components["SlatesBody"] = defs
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
    return app


class _Counted:
    """Pure ASGI middleware (cheaper than FastAPI's ``@app.middleware``): refuses a declared
    body over the limit with 413 and counts every response by route and code."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.limit = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = _error(413, "body", f"is {length.decode(errors='replace')[:20]} bytes; expected at most {self.limit}")
            status[0] = 413
            await response(scope, receive, send)
        else:
            async def counted(message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            await self.app(scope, receive, counted)
        route = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.http.labels(route, str(status[0])).inc()
        self.metrics.http_latency.labels(route).observe(time.perf_counter() - start)


async def _read_json(request: HTTPRequest, limit: int) -> Any:
    chunks, size = [], 0
    async for chunk in request.stream():  # a chunked body has no Content-Length: count it here
        size += len(chunk)
        if size > limit:
            raise _Refused(413, "body", f"is more than {limit} bytes; expected at most {limit}")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _Refused(400, "body", f"is not JSON ({str(exc)[:120]}); expected a JSON object") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _parse(body: Any, backend: Backend):
    """The body's requests (index, Request), per-request parse errors, config and deadline."""
    if not isinstance(body, dict):
        raise _Refused(400, "body", "is not a JSON object; expected {\"requests\": [...], ...}")
    unknown = [k for k in body if k not in ("requests", "config", "deadline_ms")]
    if unknown:
        raise _Refused(400, str(unknown[0])[:40], "is not a body field; expected requests, config, deadline_ms")
    raw = body.get("requests")
    if not isinstance(raw, list) or not raw:
        raise _Refused(400, "requests", "is missing, empty or not an array; expected an array of request objects")
    if len(raw) > backend.max_batch_size:
        raise _Refused(400, "requests", f"holds {len(raw)} requests; expected at most {backend.max_batch_size}")
    try:
        config = config_from_json(body.get("config"), backend.default_config)
        deadline_ms = check_deadline("deadline_ms", body.get("deadline_ms"))
    except ConfigError as exc:
        raise _Refused(400, exc.field, str(exc)) from None
    requests, errors = [], {}
    for i, item in enumerate(raw):
        try:
            requests.append((i, request_from_json(item)))
        except FieldError as exc:
            rid = item.get("request_id", "") if isinstance(item, dict) else ""
            where = f"requests[{i}]" if exc.field == "request" else f"requests[{i}].{exc.field}"
            errors[i] = Slate(rid if isinstance(rid, str) else "", error=f"{where}: {exc.problem}; expected {exc.expected}")
    return requests, errors, config, deadline_ms


async def _with_deadline(coro, deadline_ms: float | None):
    if deadline_ms is None:
        return await coro
    # the server answers a missed deadline itself; this bounds a batch that runs far past it
    return await asyncio.wait_for(coro, deadline_ms / 1e3 + 1.0)
