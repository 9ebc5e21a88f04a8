"""HTTP server (the ``serve`` extra: FastAPI + uvicorn) around a :class:`RoutedSearcher`.

Endpoints:

* ``POST /search`` ``{"query": str, "k": int = 10, "point": str | null}`` ->
  ``{"point", "ranker_point", "rerank_depth", "hits": [{"doc_id", "score", "title", "text"}], "latency_ms",
  "batch_size"}`` (``ranker_point`` null and ``rerank_depth`` 0 when not reranked);
  invalid input -> 422 with a message; queue full -> 503 with ``Retry-After``.
* ``GET /health`` -> status, points, current point, QPS estimate, queue length, the query path
  served and the one the profile was measured on.
* ``GET /metrics`` -> Prometheus text (requests, rejections, latency histogram, QPS, chosen point).

Limits (:class:`ServerLimits`, documented defaults): admission counts *requests* -- the router's
bounded queue decides, and every rejection is this server's own 503 with ``Retry-After``, counted
in ``/metrics`` (uvicorn's connection cap, which counts open sockets, is not used); a connection
that sends nothing is closed after ``idle_timeout_s``, one whose request is not complete
``request_timeout_s`` after its first byte is closed too (slow clients cannot hold the server);
a body over ``max_body_bytes`` is refused with 413 before it is parsed; with ``api_key`` set,
``/search`` and ``/metrics`` need the header ``X-API-Key`` (401 otherwise), ``/health`` stays open
for load balancers; the interactive ``/docs`` and ``/openapi.json`` are off unless ``docs=True``.
"""
# no `from __future__ import annotations`: FastAPI must see the real types of the local models
import asyncio
import contextlib
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any, Optional

from elasticdenser.data.types import is_blank
from elasticdenser.errors import InvalidInputError
from elasticdenser.operating_point import ServingConfig
from elasticdenser.serve.router import Overloaded, RouterConfig
from elasticdenser.serve.service import RoutedSearcher

__all__ = ["MAX_K", "MAX_QUERY_CHARS", "API_KEY_HEADER", "ServerLimits", "create_app", "serve", "uvicorn_options"]

MAX_K = 1000
MAX_QUERY_CHARS = 10_000
API_KEY_HEADER = "x-api-key"


@dataclass(frozen=True)
class ServerLimits:
    """What one client may cost the server (see the module docstring)."""

    max_body_bytes: int = 64 * 1024  #: a query of MAX_QUERY_CHARS characters fits several times over
    idle_timeout_s: float = 5.0  #: a connection with no request in flight (new or kept alive)
    request_timeout_s: float = 10.0  #: from a request's first byte to its complete headers and body
    api_key: Optional[str] = None  #: required in X-API-Key for /search and /metrics when set
    docs: bool = False  #: serve /docs and /openapi.json

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.idle_timeout_s <= 0 or self.request_timeout_s <= 0:
            raise InvalidInputError("server limits must be positive")


def _hit_json(hit: Any) -> dict:
    return {
        "doc_id": str(getattr(hit, "doc_id", "")),
        "score": float(getattr(hit, "score", 0.0)),
        "title": getattr(hit, "title", "") or "",
        "text": getattr(hit, "text", "") or "",
    }


def create_app(target: Any, profile: Any = None, config: Optional[RouterConfig] = None, warm_up: bool = True,
               limits: Optional[ServerLimits] = None):
    """A FastAPI app serving ``target``: a :class:`RoutedSearcher`, or any object with
    ``points`` and ``search_texts`` (wrapped in a RoutedSearcher with ``profile``/``config``).

    The app starts the service on startup (after one warm-up search per point if ``warm_up``) and
    drains it on shutdown. It is returned wrapped in the body-size / API-key guard of ``limits``.
    """
    limits = limits or ServerLimits()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from pydantic import BaseModel, Field, field_validator

    service = target if isinstance(target, RoutedSearcher) else RoutedSearcher(target, profile=profile, config=config)

    class SearchRequest(BaseModel):
        query: str = Field(..., min_length=1, max_length=MAX_QUERY_CHARS, description="the question")
        k: int = Field(10, ge=1, le=MAX_K, description="number of passages to return")
        point: Optional[str] = Field(None, description="operating point; omitted = the router chooses")

        @field_validator("query")
        @classmethod
        def _not_blank(cls, v: str) -> str:
            if is_blank(v):
                raise InvalidInputError("query must contain non-whitespace text (invisible characters do not count)")
            return v

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(None, lambda: service.start(warm_up=warm_up))
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.close)

    if limits.docs:
        app = FastAPI(title="ElasticDenser", lifespan=lifespan)
    else:
        app = FastAPI(title="ElasticDenser", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        service.metrics.bad_requests += 1
        problems = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            problems.append(f"{loc or 'body'}: {e.get('msg')}")
        return JSONResponse(status_code=422, content={"error": "invalid request", "detail": problems})

    @app.post("/search")
    async def search(req: SearchRequest):
        try:
            fut = service.submit(req.query, req.k, req.point)
        except Overloaded as exc:  # counted by the service
            return _overloaded(exc)
        except ValueError as exc:  # unknown / malformed operating point
            service.metrics.bad_requests += 1
            return JSONResponse(status_code=422, content={"error": "invalid request", "detail": [f"point: {exc}"]})
        try:
            res = await asyncio.wrap_future(fut)
        except Overloaded as exc:  # shed in the queue: it could no longer meet the SLO (counted)
            return _overloaded(exc)
        except Exception as exc:
            return JSONResponse(status_code=500, content={"error": "search failed", "detail": str(exc)})
        config = res.config or ServingConfig(res.point)
        return {
            "point": res.point.name,
            "ranker_point": config.ranker.name if config.ranker else None,
            "rerank_depth": config.depth,
            "hits": [_hit_json(h) for h in res.hits],
            "latency_ms": round(res.latency_ms, 3),
            "batch_size": res.batch_size,
        }

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(service.metrics_text(), media_type="text/plain; version=0.0.4")

    return _Guard(app, limits, service)


def _overloaded(exc: Overloaded):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=503, content={"error": "overloaded", "detail": str(exc)},
                        headers={"Retry-After": str(int(math.ceil(exc.retry_after_s)))})


class _Guard:
    """ASGI wrapper: the API key and the body-size limit, checked before FastAPI parses anything."""

    def __init__(self, app: Any, limits: ServerLimits, service: RoutedSearcher):
        self.app, self.limits, self.service = app, limits, service
        self.state = app.state  # callers reach the service as app.state.service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        key = self.limits.api_key
        if key and scope.get("path") != "/health" and not hmac.compare_digest(headers.get(API_KEY_HEADER, ""), key):
            return await _reply(send, 401, {"error": "unauthorized", "detail": "missing or wrong X-API-Key header"})
        limit = self.limits.max_body_bytes

        async def too_large():
            self.service.metrics.bad_requests += 1
            await _reply(send, 413, {"error": "request body too large", "detail": f"at most {limit} bytes"})

        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await too_large()
        body, size, more = [], 0, True
        try:
            async with asyncio.timeout(self.limits.request_timeout_s):
                while more:  # read (at most limit bytes of) the body before the app sees it
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    body.append(message.get("body", b""))
                    size += len(body[-1])
                    more = message.get("more_body", False)
                    if size > limit:
                        return await too_large()
        except TimeoutError:
            return await _reply(send, 408, {"error": "request timeout",
                                            "detail": f"body not received within {self.limits.request_timeout_s:g} s"})
        data = b"".join(body)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _reply(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _guarded_protocol(limits: ServerLimits):
    """uvicorn's h11 protocol with the two deadlines a public server needs: uvicorn arms its
    keep-alive timer only after a response, so a socket that never sends a byte would stay open
    for ever, and one that sends its headers slowly would too."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
            self._request_deadline = None

        def data_received(self, data: bytes) -> None:
            waiting = self.cycle  # the cycle of the last request (None before the first)
            between = waiting is None or waiting.response_complete  # no request in flight: these bytes start one
            super().data_received(data)
            if between and self.cycle is waiting and self._request_deadline is None:  # its headers are incomplete
                self._request_deadline = self.loop.call_later(limits.request_timeout_s, self._expire, waiting)
            elif self.cycle is not waiting and self._request_deadline is not None:
                self._request_deadline.cancel()
                self._request_deadline = None

        def _expire(self, waiting) -> None:
            self._request_deadline = None
            if self.cycle is waiting and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc):
            if self._request_deadline is not None:
                self._request_deadline.cancel()
                self._request_deadline = None
            super().connection_lost(exc)

    return GuardedH11Protocol


def serve(target: Any, host: str = "127.0.0.1", port: int = 8000, profile: Any = None,
          config: Optional[RouterConfig] = None, log_level: str = "info",
          limits: Optional[ServerLimits] = None) -> None:
    import sys

    import uvicorn

    # The batch worker thread holds the GIL between torch calls; a short switch interval keeps the
    # event loop (parsing, validation, JSON) from waiting 5 ms for every hand-over under load.
    sys.setswitchinterval(0.0005)
    limits = limits or ServerLimits()
    app = create_app(target, profile, config, limits=limits)
    uvicorn.run(app, **uvicorn_options(limits), host=host, port=port, log_level=log_level)


def uvicorn_options(limits: ServerLimits) -> dict:
    """The uvicorn settings that go with ``limits`` (for callers that run uvicorn themselves).

    No ``limit_concurrency``: it counts open sockets, so idle ones would turn every request into
    uvicorn's own uncounted 503; admission is the router's bounded queue instead."""
    return {"http": _guarded_protocol(limits), "timeout_keep_alive": limits.idle_timeout_s}
