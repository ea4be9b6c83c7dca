"""The service's limits cannot be bypassed: the request-size limit holds whatever the body framing (chunked, a
Content-Length that lies, multipart), a batch holds one full-size image at a time, and clients that stop sending
are answered 408 and release their slot. The framing cases run against a real uvicorn server on a free localhost
port, spoken to through raw sockets."""

from __future__ import annotations

import io
import socket
import threading
import time
import tracemalloc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from l2ood.cli import main
from l2ood.errors import ConfigError
from l2ood.screen import Screener

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from tests.conftest import wait_ready  # noqa: E402

from l2ood.deploy import service  # noqa: E402
from l2ood.deploy.service import ServeConfig, create_app  # noqa: E402

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained and calibrated run."""
    from tests.conftest import tiny_run

    return tiny_run(tmp_path_factory.mktemp("limits"), n_test=60, calibrate=True)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


GOOD = _png(np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[str]:
    """A real uvicorn server (in a thread): a 64 KiB request limit, 2 requests in flight, a 4 s body deadline."""
    scr = Screener.from_run(run_dir, device="cpu", precision="fp32")
    app = create_app(scr, ServeConfig(max_request_bytes=LIMIT, max_in_flight=2, body_timeout_s=4.0))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(url, 60):
            pytest.fail("the service did not become ready")
        yield url
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


class RawClient:
    """One HTTP exchange on a raw socket: headers and body parts sent as given (a server that answers and closes
    early may reset the connection; what it answered is still read)."""

    def __init__(self, url: str, read_timeout: float = 15.0) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.settimeout(read_timeout)

    def send(self, *parts: bytes) -> None:
        try:
            for p in parts:
                self.sock.sendall(p)
        except OSError:
            pass  # the server answered and closed before the end of the body

    def response(self) -> tuple[int, bytes]:
        data = b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            self.sock.close()
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
        return status, data


def _head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunked(body: bytes, size: int) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)] + [
        b"0\r\n\r\n"]


def _healthy(url: str) -> None:
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    r = httpx.post(f"{url}/v1/screen", content=GOOD, timeout=30)
    assert r.status_code == 200 and r.json()["verdict"] in ("in", "out"), r.text


def _multipart(payload: bytes, boundary: str = "xyzzy") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("framing", ["chunked, 16 KiB chunks", "chunked, one 1 MiB chunk",
                                     "chunked multipart batch", "declared Content-Length over the limit"])
def test_bodies_over_the_limit_get_413_whatever_the_framing(server: str, framing: str) -> None:
    big = GOOD + bytes(1024 * 1024)  # 1 MiB: 16 × the limit
    c = RawClient(server)
    if framing == "chunked, 16 KiB chunks":
        c.send(_head("/v1/screen", Transfer_Encoding="chunked"), *_chunked(big, 16 * 1024))
    elif framing == "chunked, one 1 MiB chunk":
        c.send(_head("/v1/screen", Transfer_Encoding="chunked"), *_chunked(big, len(big)))
    elif framing == "chunked multipart batch":
        c.send(_head("/v1/screen/batch", Transfer_Encoding="chunked",
                     Content_Type="multipart/form-data; boundary=xyzzy"), *_chunked(_multipart(big), 8192))
    else:
        c.send(_head("/v1/screen", Content_Length=str(len(big))))  # refused on the header, before any body byte
    status, raw = c.response()
    assert status == 413, raw[:300]
    assert b"exceeds the limit" in raw and b"connection: close" in raw.lower()
    _healthy(server)


def test_a_content_length_that_lies_never_delivers_more_than_it_declares(server: str) -> None:
    # declares half the image, sends all of it and 200 KiB more: the handler gets the declared bytes (truncated,
    # unreadable: 422); the rest is not a request (400 from the HTTP parser), and nothing of it is screened
    half = len(GOOD) // 2
    c = RawClient(server)
    c.send(_head("/v1/screen", Content_Length=str(half)), GOOD + bytes(200 * 1024))
    status, raw = c.response()
    assert status == 422 and b'"verdict":null' in raw and b'"status":"error"' in raw, raw[:400]
    assert raw.count(b"HTTP/1.1 200") == 0 and b"HTTP/1.1 400" in raw
    _healthy(server)


def test_a_chunked_body_within_the_limit_is_screened(server: str) -> None:
    c = RawClient(server)
    c.send(_head("/v1/screen", Transfer_Encoding="chunked", Connection="close"), *_chunked(GOOD, 50))
    status, raw = c.response()
    assert status == 200 and b'"status":"ok"' in raw.replace(b" ", b""), raw[:300]


def test_stalled_clients_get_408_and_release_their_slots(server: str) -> None:
    # two clients declare a body and send a few bytes of it, then stop: they hold both in-flight slots
    stalled = []
    url = server
    first = RawClient(url)
    first.send(_head("/v1/screen", Content_Length="5000"), GOOD[:10])
    stalled.append(first)
    time.sleep(0.3)
    r = httpx.post(f"{url}/v1/screen", content=GOOD, timeout=30)
    assert r.status_code == 200  # one slot still free: valid requests are served while a client stalls
    second = RawClient(url)
    second.send(_head("/v1/screen/batch", Transfer_Encoding="chunked", Content_Type="multipart/form-data; "
                      "boundary=xyzzy"), b"10\r\n--xyzzy\r\nContent")
    stalled.append(second)
    time.sleep(0.3)
    busy = httpx.post(f"{url}/v1/screen", content=GOOD, timeout=30)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"  # both slots held by stalled bodies
    for c in stalled:  # the 4 s body deadline answers them (the socket read timeout is 15 s)
        status, raw = c.response()
        assert status == 408 and b"body-read timeout" in raw, raw[:300]
    _healthy(url)  # their slots are back


# ------------------------------------------------------------------------------------------------ batch memory

def test_a_batch_holds_one_full_size_image_at_a_time(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    side, n = 1500, 16
    full_bytes = side * side * 3
    files = [("files", (f"{i}.png", _png(np.full((side, side, 3), i * 9, np.uint8)), "image/png")) for i in range(n)]
    live: set[int] = set()
    most = [0]
    real = service.decode_image

    def tracked(*args: Any, **kwargs: Any) -> np.ndarray:
        arr = real(*args, **kwargs)
        key = id(arr)
        live.add(key)
        most[0] = max(most[0], len(live))
        weakref.finalize(arr, live.discard, key)
        return arr

    monkeypatch.setattr(service, "decode_image", tracked)
    scr = Screener.from_run(run_dir, device="cpu", precision="fp32")
    with TestClient(create_app(scr, ServeConfig(decode_workers=1))) as c:
        assert c.post("/v1/screen/batch", files=files[:1]).status_code == 200  # warm up allocations
        tracemalloc.start()
        try:
            r = c.post("/v1/screen/batch", files=files)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    res = r.json()["results"]
    assert r.status_code == 200 and len(res) == n and all(x["status"] == "ok" for x in res)
    assert most[0] == 1  # each decoded image was gone before the next one was decoded
    # all 16 decoded at once would be 16 × 6.75 MB = 108 MB; one at a time stays within a few copies of one
    assert peak < 5 * full_bytes, (peak, full_bytes)
    assert max(service._preview(np.zeros((side, side, 3), np.uint8)).shape[:2]) == service.THUMB_PX


def test_decoders_that_outrun_the_budget_are_abandoned(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder stuck in one call (which the reader-side deadline cannot interrupt) gets the request answered
    422 at ``max_decode_s + DECODE_GRACE_S``; its slot stays taken until it ends (503 + Retry-After meanwhile)."""
    release = threading.Event()
    real = service.decode_image

    def stuck(data: bytes, *args: Any) -> np.ndarray:
        if data == b"stuck":
            release.wait(30)
            raise service.DecodeBudgetError("released")
        return real(data, *args)

    monkeypatch.setattr(service, "decode_image", stuck)
    monkeypatch.setattr(service, "DECODE_GRACE_S", 0.2)
    scr = Screener.from_run(run_dir, device="cpu", precision="fp32")
    with TestClient(create_app(scr, ServeConfig(decode_workers=1, max_decode_s=0.3))) as c:
        try:
            r = c.post("/v1/screen", content=b"stuck")
            assert r.status_code == 422 and "decode budget" in r.json()["error"] and r.json()["verdict"] is None
            busy = c.post("/v1/screen", content=GOOD)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
        finally:
            release.set()
        for _ in range(100):  # the slot returns when the thread ends
            ok = c.post("/v1/screen", content=GOOD)
            if ok.status_code != 503:
                break
            time.sleep(0.05)
        assert ok.status_code == 200 and ok.json()["status"] == "ok"


def test_serve_options_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    import l2ood.deploy.service as svc

    monkeypatch.delenv("L2OOD_SERVE_TOKEN", raising=False)
    monkeypatch.setattr(svc, "serve", lambda run, **kw: seen.update(kw))
    assert main(["serve", "RUN", "--body-timeout-s", "7.5", "--max-decode-s", "3"]) == 0
    cfg = seen["config"]
    assert cfg.body_timeout_s == 7.5 and cfg.max_decode_s == 3.0
    with pytest.raises(ConfigError, match="body_timeout_s"):
        ServeConfig(body_timeout_s=0).validate()
