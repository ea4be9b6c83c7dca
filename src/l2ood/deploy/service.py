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
Limits (:class:`RequestGuard`, :class:`ServeConfig`): request bytes, counted on the bytes actually received
whatever the framing (Content-Length, chunked, multipart; 413 as soon as the limit is passed), the time to receive
the body (408 after ``body_timeout_s``, the request's slot released), requests in flight (503 + ``Retry-After``),
images per batch request (413), pixels per image and decoding work per image (422: the decode budget of
:func:`l2ood.data.preprocess.decode_image`, a structural check plus a ``max_decode_s`` deadline, backed here by
a hard timeout on the decoding thread). The images of a request are decoded one at a time, each brought to the
model's input size (and a thumbnail-size preview) at once: a request holds at most one full-size image, and
at most ``decode_workers`` images are decoded at a time. With a token, every ``/v1`` and
``/review`` request needs ``Authorization: Bearer <token>`` (compared in constant time, 401 otherwise); the
CLI refuses to listen beyond loopback without one. On SIGTERM/SIGINT uvicorn stops accepting connections,
requests in flight finish (the batcher drains its queue), then the process exits.
"""


import asyncio
import contextlib
import hmac
import ipaddress
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.preprocess import DEFAULT_MAX_DECODE_S, DEFAULT_MAX_PIXELS, DecodeBudgetError, ImageReadError, decode_image
from ..errors import ConfigError
from ..report.review import THUMB_PX, ReviewCollector, thumbnail_png
from ..screen import Screener

#: extra seconds the service waits for a decoding thread beyond ``max_decode_s`` before answering without it
DECODE_GRACE_S = 2.0


def _default_decode_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class ServeConfig:
    """Limits and behaviour of the service.

    ``max_request_bytes`` counts the body bytes actually received (any framing); ``body_timeout_s`` is the
    time a request's whole body may take to arrive (408 after it); ``max_decode_s`` the time one image may
    take to decode (the decode budget, 422 after it); ``decode_workers`` the images decoded at the same time
    (each is one full-size image in memory)."""

    token: str | None = None
    max_request_bytes: int = 32 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch_images: int = 64
    max_in_flight: int = 256
    max_batch: int = 64
    batch_window_ms: float = 5.0
    review_thumbnails: int = 200
    body_timeout_s: float = 30.0
    max_decode_s: float = DEFAULT_MAX_DECODE_S
    decode_workers: int = field(default_factory=_default_decode_workers)

    def validate(self) -> None:
        for k in ("max_request_bytes", "max_pixels", "max_batch_images", "max_in_flight", "max_batch",
                  "review_thumbnails", "decode_workers"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1")
        if not self.batch_window_ms >= 0:
            raise ConfigError("batch_window_ms must be >= 0")
        for k in ("body_timeout_s", "max_decode_s"):
            if not 0 < getattr(self, k) < float("inf"):
                raise ConfigError(f"{k} must be a positive number of seconds")
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


class Refused(Exception):
    """A request answered before (or instead of) its handler: HTTP ``status`` with ``{"status": "error",
    "error": message}``; ``close`` ends the connection (its body was not read to the end)."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.close = status, message, headers or {}, close


async def _send_error(send: Callable[[dict[str, Any]], Awaitable[None]], e: Refused) -> None:
    body = json.dumps({"status": "error", "error": e.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in e.headers.items()]
    if e.close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware for ``POST`` requests: the in-flight limit (503 + ``Retry-After``), the request-size
    limit counted on the bytes the handler actually receives, whatever the framing (a declared Content-Length
    over the limit: 413 before reading; chunked, multipart or any body that turns out longer: 413 as soon as
    the limit is passed), and the body deadline (the whole body within ``body_timeout_s``, else 408). These
    answers close the connection (the rest of the body is never read) and release the request's slot. A
    handler may also raise :class:`Refused`."""

    def __init__(self, app: Any, *, cfg: ServeConfig, slots: asyncio.Semaphore, state: dict[str, Any]) -> None:
        from starlette.requests import ClientDisconnect

        self.app, self.cfg, self.slots, self.state = app, cfg, slots, state
        self._disconnect = ClientDisconnect

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        limit = self.cfg.max_request_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                await _send_error(send, Refused(400, "bad Content-Length", close=True))
                return
            if n > limit:
                await _send_error(send, Refused(413, f"request of {n} bytes exceeds the limit of {limit}",
                                                close=True))
                return
        if self.slots.locked():
            await _send_error(send, Refused(503, "too many requests in flight; retry", headers={"Retry-After": "1"},
                                            close=True))  # the body is not read: the connection cannot go on
            return
        async with self.slots:
            self.state["active"] += 1
            try:
                await self._handle(scope, receive, send)
            finally:
                self.state["active"] -= 1

    async def _handle(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                      send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.body_timeout_s
        received, complete, started = 0, False, False

        async def guarded_receive() -> dict[str, Any]:
            nonlocal received, complete
            if complete:  # the body is in: later receives only wait for a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise Refused(408, f"the request body did not arrive within {cfg.body_timeout_s:g} s "
                                   "(body-read timeout)", close=True) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cfg.max_request_bytes:
                    raise Refused(413, f"request body exceeds the limit of {cfg.max_request_bytes} bytes",
                                  close=True)
                complete = not message.get("more_body", False)
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracked_send)
        except Refused as e:
            if started:
                raise
            await _send_error(send, e)
        except self._disconnect:
            pass  # the client left while sending: nobody to answer


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
    except ImportError:
        raise ConfigError("serving needs FastAPI and uvicorn: pip install 'l2ood[serve]'") from None
    cfg = config or ServeConfig()
    cfg.validate()
    if not screener.calibrated:
        raise ConfigError("the run is not calibrated: run `l2ood calibrate RUN` first (a service must give verdicts)")
    state: dict[str, Any] = {"ready": False, "active": 0, "seen": 0}
    review = ReviewCollector(max_thumbs=cfg.review_thumbnails)
    in_flight = asyncio.Semaphore(cfg.max_in_flight)
    decode_slots = asyncio.Semaphore(cfg.decode_workers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        app.state.decoders = ThreadPoolExecutor(max_workers=cfg.decode_workers, thread_name_prefix="l2ood-decode")
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
            app.state.decoders.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="l2ood screening service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(RequestGuard, cfg=cfg, slots=in_flight, state=state)

    def authorize(request: Request) -> None:
        if cfg.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), cfg.token.encode())
        if not ok:
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    def prepare(data: bytes) -> tuple[Tensor, np.ndarray]:
        """On a decoding thread: the model input and a thumbnail-size preview; the full-size image is dropped."""
        arr = decode_image(data, cfg.max_pixels, cfg.max_decode_s)
        return screener.to_model_format(arr)[0], _preview(arr)

    async def decode(request: Request, data: bytes) -> tuple[Tensor, np.ndarray]:
        """:func:`prepare` on one of ``decode_workers`` threads, within the decode budget. Should a decoder
        outrun its own deadline (it checks it on every read), the request is answered without it at
        ``max_decode_s + DECODE_GRACE_S``; its slot comes back when the thread ends."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(decode_slots.acquire(), cfg.max_decode_s)
        except asyncio.TimeoutError:
            raise Refused(503, "every image decoder is busy; retry", headers={"Retry-After": "1"}) from None

        def release(_: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop may be gone at shutdown
                loop.call_soon_threadsafe(decode_slots.release)

        try:
            fut = request.app.state.decoders.submit(prepare, data)
        except RuntimeError:  # shutting down
            decode_slots.release()
            raise Refused(503, "the service is stopping; retry", headers={"Retry-After": "1"}) from None
        fut.add_done_callback(release)
        try:
            result: tuple[Tensor, np.ndarray] = await asyncio.wait_for(asyncio.wrap_future(fut),
                                                                       cfg.max_decode_s + DECODE_GRACE_S)
        except asyncio.TimeoutError:
            raise DecodeBudgetError(f"decoding took longer than {cfg.max_decode_s:g} s (decode budget: the image "
                                    "is refused, not judged)") from None
        return result

    async def read_images(request: Request, many: bool) -> tuple[list[tuple[str, Any]], Any]:
        """The uploads (name, bytes or an unread multipart file) and the form to close afterwards (or None)."""
        ctype = request.headers.get("content-type", "")
        form = None
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=cfg.max_batch_images + 1, max_fields=cfg.max_batch_images + 8)
            files: list[tuple[str, Any]] = [(getattr(v, "filename", None) or k, v) for k, v in form.multi_items()
                                            if hasattr(v, "read") and k in (("files", "file") if many else ("file",))]
        else:
            body = await request.body()
            state["seen"] += 1
            files = [(request.headers.get("x-filename") or f"upload #{state['seen']}", body)]
        if not files:
            if form is not None:
                await form.close()
            raise HTTPException(status_code=422, detail="no image: send the bytes as the body or a multipart "
                                                        f"field '{'files' if many else 'file'}'")
        if many and len(files) > cfg.max_batch_images:
            if form is not None:
                await form.close()
            raise HTTPException(status_code=413, detail=f"{len(files)} images exceed the limit of "
                                                        f"{cfg.max_batch_images} per request")
        return files, form

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
                                                         "max_in_flight", "max_batch", "batch_window_ms",
                                                         "body_timeout_s", "max_decode_s", "decode_workers")},
                "stats": vars(request.app.state.batcher.stats)}

    async def screen_files(request: Request, files: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        """Decode the uploads one after the other (each reduced to the model's input at once), then score them
        together; unreadable ones become error records."""
        prepared: list[tuple[str, Tensor | None, np.ndarray | None, str | None]] = []
        for name, src in files:
            try:
                data = src if isinstance(src, bytes) else await src.read()
                t, preview = await decode(request, data)
                prepared.append((name, t, preview, None))
            except (ImageReadError, ConfigError) as e:
                prepared.append((name, None, None, str(e)))
            finally:
                data = b""
                if not isinstance(src, bytes):
                    await src.close()
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
        files, form = await read_images(request, many=False)
        try:
            (rec,) = await screen_files(request, files[:1])
        finally:
            if form is not None:
                await form.close()
        if rec["status"] == "error":
            code = 503 if "non-finite" in str(rec["error"]) else 422
            return JSONResponse(rec, status_code=code)
        return rec

    @app.post("/v1/screen/batch")
    async def screen_batch(request: Request) -> dict[str, Any]:
        authorize(request)
        files, form = await read_images(request, many=True)
        try:
            return {"results": await screen_files(request, files)}
        finally:
            if form is not None:
                await form.close()

    @app.get("/review", response_class=HTMLResponse)
    async def review_page(request: Request) -> str:
        authorize(request)
        cal = screener.calibration
        return review.html(calibration_scores=cal.scores if cal else None,
                           threshold=screener.threshold if screener.threshold is not None else
                           (cal.threshold if cal else None), rule=_rule(screener),
                           title="l2ood service review", subtitle=f"run {run_label}; inputs screened by this process")

    return app


def _preview(img: np.ndarray) -> np.ndarray:
    """The image reduced to thumbnail size (longest side ``THUMB_PX``, as :func:`thumbnail_png` would reduce it):
    what the review page keeps instead of the full-size image."""
    if max(img.shape[:2]) <= THUMB_PX:
        return img
    from PIL import Image

    im = Image.fromarray(img)
    im.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
    return np.asarray(im)


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
