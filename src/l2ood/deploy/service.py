"""``l2ood serve RUN``: an HTTP screening service (FastAPI + uvicorn) in front of a classifier.

Endpoints (JSON unless stated):

* ``POST /v1/screen`` — one image, as the raw request body (any image type; an optional ``X-Filename``
  header names it) or as a multipart form field ``file``. 200 with the record ``{status, score,
  p_value, verdict, pred_class, pred_name, confidence}``; 422 with ``{"status": "error", "error": reason}``
  for an image that cannot be read; 503 when the model gives a non-finite score (no verdict: fail closed).
* ``POST /v1/screen/batch`` — multipart with up to ``max_batch_images`` fields named ``files``; 200 with
  ``{"results": [record, ...]}`` in upload order (unreadable files are error records, as in ``l2ood screen``).
* ``GET /v1/info`` — run, rule, classes, limits. ``GET /review`` — the review page (HTML) of what this
  process has screened: histograms and thumbnails of flagged inputs (:mod:`l2ood.report.review`).
* ``GET /health`` (liveness) and ``GET /ready`` (200 once the model is loaded and warmed up, 503 while
  starting or shutting down) — no authentication.

The calibration decides the detector(s) (:class:`l2ood.screen.Screener`): fitted statistics
(``RUN/detectors/…``) are loaded once at start-up from the files the calibration was made with, detectors that
need the model (ODIN, RankFeat) run it inside the forward pass of each micro-batch, and a combined calibration
answers with the combined conformal p-value.

Concurrent requests share one model through a micro-batcher: while other requests are in flight, images
queue up for at most ``batch_window_ms`` (or until ``max_batch`` images) and are scored in one forward pass on
a worker thread; a request alone is scored at once.
Limits: request bytes (413; requests without Content-Length are refused with 411), pixels per image (422),
images per batch request (413), requests in flight (503 + ``Retry-After``). With a token, every ``/v1`` and
``/review`` request needs ``Authorization: Bearer <token>`` (compared in constant time, 401 otherwise); the
CLI refuses to listen beyond loopback without one. On SIGTERM/SIGINT uvicorn stops accepting connections,
requests in flight finish (the batcher drains its queue), then the process exits.
"""


import asyncio
import contextlib
import hmac
import ipaddress
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.preprocess import DEFAULT_MAX_PIXELS, ImageReadError, decode_image
from ..errors import ConfigError
from ..report.review import ReviewCollector, thumbnail_png
from ..screen import Screener


@dataclass
class ServeConfig:
    """Limits and behaviour of the service."""

    token: str | None = None
    max_request_bytes: int = 32 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch_images: int = 64
    max_in_flight: int = 256
    max_batch: int = 64
    batch_window_ms: float = 5.0
    review_thumbnails: int = 200

    def validate(self) -> None:
        for k in ("max_request_bytes", "max_pixels", "max_batch_images", "max_in_flight", "max_batch",
                  "review_thumbnails"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1")
        if not self.batch_window_ms >= 0:
            raise ConfigError("batch_window_ms must be >= 0")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("the token must have at least 16 characters")


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    if token:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"refusing to listen on {host} without a token: anyone who can reach it could use the "
                          "model; set L2OOD_SERVE_TOKEN (or --token-file) or listen on 127.0.0.1")


@dataclass
class _Job:
    items: list[Tensor]
    future: asyncio.Future[list[dict[str, Any]]]


@dataclass
class BatchStats:
    requests: int = 0
    images: int = 0
    forward_passes: int = 0
    largest_batch: int = 0
    seconds_in_model: float = 0.0
    started: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Groups the images of concurrent requests into forward passes on one worker thread."""

    def __init__(self, screener: Screener, max_batch: int, window_s: float,
                 in_flight: Callable[[], int] | None = None) -> None:
        self.screener, self.max_batch, self.window_s = screener, max_batch, window_s
        self.in_flight = in_flight  # requests being handled now: no point waiting for others when alone
        self.queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self.stats = BatchStats()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, items: list[Tensor]) -> list[dict[str, Any]]:
        fut: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(items, fut))
        return await fut

    async def close(self) -> None:
        """Finish every queued job, then stop."""
        await self.queue.put(None)
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            job = await self.queue.get()
            if job is None:
                break
            jobs = [job]
            n = len(job.items)
            deadline = loop.time() + self.window_s
            while n < self.max_batch:
                if self.queue.empty() and self.in_flight is not None and self.in_flight() <= len(jobs):
                    break  # nobody else is on the way: score now instead of waiting out the window
                timeout = deadline - loop.time()
                try:
                    nxt = self.queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self.queue.get(), timeout)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                n += len(nxt.items)
            flat: list[tuple[str, int | None, Tensor | str]] = [("", None, t) for j in jobs for t in j.items]
            t0 = time.perf_counter()
            try:
                recs = await loop.run_in_executor(None, self.screener.records, flat)
            except Exception as e:  # a model failure fails every waiting request, never the loop
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.stats.seconds_in_model += time.perf_counter() - t0
            self.stats.forward_passes += 1
            self.stats.largest_batch = max(self.stats.largest_batch, n)
            self.stats.requests += len(jobs)
            self.stats.images += n
            i = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(recs[i : i + len(j.items)])
                i += len(j.items)
        while not self.queue.empty():  # anything queued after the stop marker still gets an answer
            rest = self.queue.get_nowait()
            if rest is not None and not rest.future.done():
                items: list[tuple[str, int | None, Tensor | str]] = [("", None, t) for t in rest.items]
                rest.future.set_result(await loop.run_in_executor(None, self.screener.records, items))


def create_app(screener: Screener, config: ServeConfig | None = None, *, run_label: str = "") -> Any:
    """The FastAPI application serving ``screener`` (see the module doc)."""
    try:
        from fastapi import FastAPI, HTTPException, Request
        from fastapi.responses import HTMLResponse, JSONResponse
        from starlette.concurrency import run_in_threadpool
    except ImportError:
        raise ConfigError("serving needs FastAPI and uvicorn: pip install 'l2ood[serve]'") from None
    cfg = config or ServeConfig()
    cfg.validate()
    if not screener.calibrated:
        raise ConfigError("the run is not calibrated: run `l2ood calibrate RUN` first (a service must give verdicts)")
    state: dict[str, Any] = {"ready": False, "active": 0, "seen": 0}
    review = ReviewCollector(max_thumbs=cfg.review_thumbnails)
    in_flight = asyncio.Semaphore(cfg.max_in_flight)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        batcher = MicroBatcher(screener, cfg.max_batch, cfg.batch_window_ms / 1000.0, lambda: int(state["active"]))
        batcher.start()
        app.state.batcher = batcher
        c, (h, w) = screener.channels, screener.size
        await batcher.submit([torch.zeros(c, h, w, dtype=torch.uint8)])  # warm-up: first pass is the slowest
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.close()

    app = FastAPI(title="l2ood screening service", lifespan=lifespan, docs_url=None, redoc_url=None)

    def authorize(request: Request) -> None:
        if cfg.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), cfg.token.encode())
        if not ok:
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def limits(request: Request, call_next: Any) -> Any:
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"status": "error", "error": "Content-Length required"}, status_code=411)
            try:
                n = int(length)
            except ValueError:
                return JSONResponse({"status": "error", "error": "bad Content-Length"}, status_code=400)
            if n > cfg.max_request_bytes:
                return JSONResponse({"status": "error", "error": f"request of {n} bytes exceeds the limit of "
                                     f"{cfg.max_request_bytes}"}, status_code=413)
            if in_flight.locked():
                return JSONResponse({"status": "error", "error": "too many requests in flight; retry"},
                                    status_code=503, headers={"Retry-After": "1"})
            async with in_flight:
                state["active"] += 1
                try:
                    return await call_next(request)
                finally:
                    state["active"] -= 1
        return await call_next(request)

    def prepare(data: bytes) -> tuple[Tensor, np.ndarray]:
        arr = decode_image(data, cfg.max_pixels)
        return screener.to_model_format(arr)[0], arr

    async def read_images(request: Request, many: bool) -> list[tuple[str, bytes]]:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=cfg.max_batch_images + 1, max_fields=cfg.max_batch_images + 8)
            files = [(getattr(v, "filename", None) or k, await v.read()) for k, v in form.multi_items()
                     if hasattr(v, "read") and k in (("files", "file") if many else ("file",))]
            await form.close()
        else:
            body = await request.body()
            state["seen"] += 1
            files = [(request.headers.get("x-filename") or f"upload #{state['seen']}", body)]
        if not files:
            raise HTTPException(status_code=422, detail="no image: send the bytes as the body or a multipart "
                                                        f"field '{'files' if many else 'file'}'")
        if many and len(files) > cfg.max_batch_images:
            raise HTTPException(status_code=413, detail=f"{len(files)} images exceed the limit of "
                                                        f"{cfg.max_batch_images} per request")
        return files

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Any:
        if not state["ready"]:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    @app.get("/v1/info")
    async def info(request: Request) -> dict[str, Any]:
        authorize(request)
        run = screener.run
        return {"run": run_label, "model": run.config.to_dict(), "rule": _rule(screener),
                "limits": {k: getattr(cfg, k) for k in ("max_request_bytes", "max_pixels", "max_batch_images",
                                                         "max_in_flight", "max_batch", "batch_window_ms")},
                "stats": vars(request.app.state.batcher.stats)}

    async def screen_files(request: Request, files: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        prepared: list[tuple[str, Tensor | None, np.ndarray | None, str | None]] = []
        for name, data in files:
            try:
                t, arr = await run_in_threadpool(prepare, data)
                prepared.append((name, t, arr, None))
            except (ImageReadError, ConfigError) as e:
                prepared.append((name, None, None, str(e)))
        tensors = [t for _, t, _, _ in prepared if t is not None]
        recs = await request.app.state.batcher.submit(tensors) if tensors else []
        out, k = [], 0
        for name, tt, img, err in prepared:
            if tt is None:
                rec = {"path": name, "index": None, "status": "error", "score": None, "p_value": None,
                       "verdict": None, "pred_class": None, "pred_name": None, "confidence": None, "error": err}
            else:
                rec = {**recs[k], "path": name}
                k += 1
            review.add(rec, _thumb(img))
            out.append(rec)
        return out

    @app.post("/v1/screen")
    async def screen_one(request: Request) -> Any:
        authorize(request)
        files = await read_images(request, many=False)
        (rec,) = await screen_files(request, files[:1])
        if rec["status"] == "error":
            code = 503 if "non-finite" in str(rec["error"]) else 422
            return JSONResponse(rec, status_code=code)
        return rec

    @app.post("/v1/screen/batch")
    async def screen_batch(request: Request) -> dict[str, Any]:
        authorize(request)
        files = await read_images(request, many=True)
        return {"results": await screen_files(request, files)}

    @app.get("/review", response_class=HTMLResponse)
    async def review_page(request: Request) -> str:
        authorize(request)
        cal = screener.calibration
        return review.html(calibration_scores=cal.scores if cal else None,
                           threshold=screener.threshold if screener.threshold is not None else
                           (cal.threshold if cal else None), rule=_rule(screener),
                           title="l2ood service review", subtitle=f"run {run_label}; inputs screened by this process")

    return app


def _thumb(img: np.ndarray | None) -> Any:
    return None if img is None else (lambda: thumbnail_png(img))


def _rule(screener: Screener) -> str:
    if screener.threshold is not None:
        return f"OoD when score < {screener.threshold}"
    assert screener.calibration is not None
    return screener.calibration.rule()


def serve(run: str | Path, *, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          device: str = "auto", precision: str = "auto", calibration: str = "default",
          log_level: str = "info", graceful_timeout_s: int = 30) -> None:
    """Run the service until SIGTERM/SIGINT (requests in flight are finished first)."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("serving needs FastAPI and uvicorn: pip install 'l2ood[serve]'") from None
    cfg = config or ServeConfig()
    check_bind(host, cfg.token)
    screener = Screener.from_run(run, calibration=calibration, device=device, precision=precision)
    app = create_app(screener, cfg, run_label=str(run))
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_timeout_s,
                access_log=False)
