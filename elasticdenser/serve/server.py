"""HTTP server (the ``serve`` extra: FastAPI + uvicorn) around a :class:`RoutedSearcher`.

Endpoints:

* ``POST /search`` ``{"query": str, "k": int = 10, "point": str | null}`` ->
  ``{"point", "hits": [{"doc_id", "score", "title", "text"}], "latency_ms", "batch_size"}``;
  invalid input -> 422 with a message; queue full -> 503 with ``Retry-After``.
* ``GET /health`` -> status, points, current point, QPS estimate, queue length, the query path
  served and the one the profile was measured on.
* ``GET /metrics`` -> Prometheus text (requests, rejections, latency histogram, QPS, chosen point).
"""
# no `from __future__ import annotations`: FastAPI must see the real types of the local models
import asyncio
import contextlib
import math
from typing import Any, Optional

from elasticdenser.errors import InvalidInputError
from elasticdenser.serve.router import Overloaded, RouterConfig
from elasticdenser.serve.service import RoutedSearcher

MAX_K = 1000
MAX_QUERY_CHARS = 10_000


def _hit_json(hit: Any) -> dict:
    return {
        "doc_id": str(getattr(hit, "doc_id", "")),
        "score": float(getattr(hit, "score", 0.0)),
        "title": getattr(hit, "title", "") or "",
        "text": getattr(hit, "text", "") or "",
    }


def create_app(target: Any, profile: Any = None, config: Optional[RouterConfig] = None, warm_up: bool = True):
    """A FastAPI app serving ``target``: a :class:`RoutedSearcher`, or any object with
    ``points`` and ``search_texts`` (wrapped in a RoutedSearcher with ``profile``/``config``).

    The app starts the service on startup (after one warm-up search per point if ``warm_up``) and
    drains it on shutdown.
    """
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
            if not v.strip():
                raise InvalidInputError("query must contain non-whitespace text")
            return v

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(None, lambda: service.start(warm_up=warm_up))
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = FastAPI(title="ElasticDenser", lifespan=lifespan)
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
        except Overloaded as exc:
            return JSONResponse(
                status_code=503,
                content={"error": "overloaded", "detail": str(exc)},
                headers={"Retry-After": str(int(math.ceil(exc.retry_after_s)))},
            )
        except ValueError as exc:  # unknown / malformed operating point
            service.metrics.bad_requests += 1
            return JSONResponse(status_code=422, content={"error": "invalid request", "detail": [f"point: {exc}"]})
        try:
            res = await asyncio.wrap_future(fut)
        except Exception as exc:
            return JSONResponse(status_code=500, content={"error": "search failed", "detail": str(exc)})
        return {
            "point": res.point.name,
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

    return app


def serve(target: Any, host: str = "127.0.0.1", port: int = 8000, profile: Any = None,
          config: Optional[RouterConfig] = None, log_level: str = "info") -> None:
    import sys

    import uvicorn

    # The batch worker thread holds the GIL between torch calls; a short switch interval keeps the
    # event loop (parsing, validation, JSON) from waiting 5 ms for every hand-over under load.
    sys.setswitchinterval(0.0005)
    app = create_app(target, profile, config)
    router = app.state.service.router
    # Bound what waits *before* the router's queue too (connections being parsed, responses being
    # written): beyond this uvicorn answers 503 at once instead of letting the event loop fall behind.
    limit = router.max_queue + 2 * router.config.max_batch
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=limit)
