"""Reliability cases for the HTTP service's limits and the decode budget (called by benchmarks/reliability.py).

A real ``python -m l2ood serve RUN`` process is spoken to through raw sockets:

* **service: body framing** — bodies over the request limit in every framing (chunked, chunked multipart, a
  declared Content-Length, a Content-Length that declares less than is sent, no body); expected 413 (or 4xx for
  what was declared), never a verdict, and the server still healthy;
* **service: slow client** — bodies that stop arriving (or drip); expected 408 at the body deadline, the slot
  released, valid requests served;
* **service: batch memory** — a batch of large images must not raise the server's peak memory beyond what one
  such image does (all decoded images held at once would; an unbounded peak is recorded as a crash, what the
  kernel's OOM killer would make of it at scale);
* **decode budget (screen)** and **decode budget (service)** — images within the pixel limit whose decoding
  would take seconds to hours (tests/test_decode_budget.py builds them at attacker size): each must get an
  error record / a 422 with the reason, never a hang, never a verdict; multi-frame files are screened from
  their first frame.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

LIMIT_MB = 32
BODY_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 20.0  # a response later than this is a hang (the body deadline is 2 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


GOOD = _png(np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1)))


class Server:
    """``l2ood serve`` in a subprocess, its log in a file."""

    def __init__(self, run: Path, log: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "w")
        env = {k: v for k, v in os.environ.items() if k != "L2OOD_SERVE_TOKEN"}
        self.proc = subprocess.Popen([sys.executable, "-m", "l2ood", "serve", str(run), "--port", str(self.port),
                                      "--device", "cpu", "--precision", "fp32", *extra],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        from tests.conftest import wait_ready

        self.ready = wait_ready(self.url, 60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        try:
            return _request(self.url, "GET", "/health", b"")[0] == 200
        except OSError:
            return False

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Exchange:
    """One HTTP exchange on a raw socket: the parts are sent as given (a server that answers early and closes may
    reset the connection: what it answered is still read)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.settimeout(READ_TIMEOUT_S)

    def send(self, *parts: bytes, pause: float = 0.0) -> None:
        try:
            for p in parts:
                self.sock.sendall(p)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass

    def response(self) -> tuple[int | None, bytes]:
        """(status, raw bytes); status None: nothing within READ_TIMEOUT_S (a hang), 0: closed without answer."""
        data = b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except TimeoutError:
            if not data:
                self.sock.close()
                return None, b""
        except OSError:
            pass
        self.sock.close()
        return (int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0), data


def _head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: bench", "Connection: close"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunked(body: bytes, size: int) -> list[bytes]:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return [*parts, b"0\r\n\r\n"]


def _multipart(payload: bytes, boundary: str = "bench") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()


def _request(url: str, method: str, path: str, body: bytes, **headers: str) -> tuple[int | None, bytes]:
    c = Exchange(url)
    head = _head(path, Content_Length=str(len(body)), **headers).replace(b"POST ", f"{method} ".encode(), 1)
    c.send(head, body)
    return c.response()


def cases(ctx: dict[str, Any]) -> None:
    """Run every case of this module and record each with ``ctx["add"]``."""
    tmp: Path = ctx["tmp"] / "rel_service"
    tmp.mkdir(parents=True, exist_ok=True)
    add: Callable[[str, str, str], None] = ctx["add"]
    from tests.test_decode_budget import MULTI_FRAME, SLOW_IMAGES

    srv = Server(ctx["run"], tmp / "serve.log", "--max-request-mb", str(LIMIT_MB), "--body-timeout-s",
                 str(BODY_TIMEOUT_S), "--max-in-flight", "2")
    try:
        if srv.ready:
            _framing(srv, add)
            _slow_clients(srv, add)
            _batch_memory(srv, add)
            _decode_service(srv, add, SLOW_IMAGES, MULTI_FRAME)
        else:
            add("service: body framing", "server start", "crash" if srv.proc.poll() is not None else "hang")
    finally:
        srv.stop()
    _decode_screen(ctx, tmp, add, SLOW_IMAGES, MULTI_FRAME)
    _decode_deadline_service(ctx, tmp, add)


def _judge(srv: Server, log_before: int, status: int | None, raw: bytes, expect: tuple[int, ...],
           judged_is_bad: bool = True) -> str:
    """The outcome of one exchange: hang, crash (server gone), traceback (500, a traceback in its log, or an
    unexpected status), fail-open (a verdict for what had to be refused), clear error (an expected 4xx with a
    message), valid (an expected 200)."""
    if status is None:
        return "hang"
    if not srv.alive():
        return "crash"
    if "Traceback" in srv.log()[log_before:] or status == 500:
        return "traceback"
    if judged_is_bad and b'"verdict":"in"' in raw.replace(b" ", b""):
        return "fail-open"
    if status in expect:
        body = raw.partition(b"\r\n\r\n")[2]
        return "valid" if status == 200 else ("clear error" if 400 <= status < 500 and body.strip() else "traceback")
    return "traceback"


def _framing(srv: Server, add: Callable[[str, str, str], None]) -> None:
    kind = "service: body framing"
    over = GOOD + bytes((LIMIT_MB + 8) * 1024 * 1024)  # 40 MB: over the 32 MB limit
    cases: list[tuple[str, list[bytes], tuple[int, ...]]] = [
        ("chunked 40 MB (64 KiB chunks) over a 32 MB limit",
         [_head("/v1/screen", Transfer_Encoding="chunked"), *_chunked(over, 65536)], (413,)),
        ("chunked 40 MB in one chunk over a 32 MB limit",
         [_head("/v1/screen", Transfer_Encoding="chunked"), *_chunked(over, len(over))], (413,)),
        ("chunked multipart batch of 40 MB over a 32 MB limit",
         [_head("/v1/screen/batch", Transfer_Encoding="chunked", Content_Type="multipart/form-data; boundary=bench"),
          *_chunked(_multipart(over), 1 << 20)], (413,)),
        ("Content-Length 40 MB declared (refused before the body)",
         [_head("/v1/screen", Content_Length=str(len(over))), over[: 1 << 20]], (413,)),
        ("Content-Length declares 50 B, 40 MB sent",  # 50 B screened (422) or the rest refused by the parser (400)
         [_head("/v1/screen", Content_Length="50"), over], (400, 422)),
        ("Content-Length and chunked both, 40 MB",
         [_head("/v1/screen", Content_Length="100", Transfer_Encoding="chunked"), *_chunked(over, 1 << 20)],
         (400, 413, 422)),
        ("no body at all", [_head("/v1/screen")], (422,)),
        ("chunked 40 MB to an unknown path", [_head("/v1/nothing", Transfer_Encoding="chunked"),
                                              *_chunked(over, 1 << 20)], (404, 405, 413)),
    ]
    for case, parts, expect in cases:
        before = len(srv.log())
        c = Exchange(srv.url)
        c.send(*parts)
        status, raw = c.response()
        add(kind, case, _judge(srv, before, status, raw, expect))
    before = len(srv.log())
    c = Exchange(srv.url)
    c.send(_head("/v1/screen", Transfer_Encoding="chunked"), *_chunked(GOOD, 100))
    status, raw = c.response()
    add(kind, "chunked image within the limit (screened)", _judge(srv, before, status, raw, (200,), False))


def _slow_clients(srv: Server, add: Callable[[str, str, str], None]) -> None:
    kind = "service: slow client"
    stalls = [
        ("Content-Length 5000, 10 bytes sent, then silence", [_head("/v1/screen", Content_Length="5000"), GOOD[:10]]),
        ("chunked, stops inside a chunk", [_head("/v1/screen", Transfer_Encoding="chunked"), b"400\r\n" + GOOD[:20]]),
        ("multipart batch, stops inside the part headers",
         [_head("/v1/screen/batch", Content_Length="100000", Content_Type="multipart/form-data; boundary=bench"),
          b"--bench\r\nContent-Disp"]),
    ]
    for case, parts in stalls:
        before = len(srv.log())
        c = Exchange(srv.url)
        c.send(*parts)
        status, raw = c.response()
        add(kind, case, _judge(srv, before, status, raw, (408,)))

    # a drip: one byte every 0.25 s (never idle for long, but the whole body is late)
    before = len(srv.log())
    c = Exchange(srv.url)
    body = GOOD[:40]
    dripper = threading.Thread(target=c.send, args=(_head("/v1/screen", Content_Length=str(len(GOOD))),
                                                     *[body[i : i + 1] for i in range(len(body))]),
                               kwargs={"pause": 0.25}, daemon=True)
    dripper.start()
    status, raw = c.response()
    add(kind, "drip of 1 byte every 0.25 s", _judge(srv, before, status, raw, (408,)))
    dripper.join(timeout=15)

    # every slot held by a stalled client: valid requests get 503 meanwhile, then are served once they time out
    before = len(srv.log())
    held = [Exchange(srv.url) for _ in range(2)]
    for h in held:
        h.send(_head("/v1/screen", Content_Length="5000"), GOOD[:10])
    time.sleep(0.5)
    busy, _ = _request(srv.url, "POST", "/v1/screen", GOOD)
    answers = [h.response()[0] for h in held]
    status, raw = _request(srv.url, "POST", "/v1/screen", GOOD)
    outcome = _judge(srv, before, status, raw, (200,), False)
    if busy not in (200, 503) or answers != [408, 408]:
        outcome = "hang" if None in answers else "traceback"
    add(kind, "2 stalled clients hold every slot, then a valid request", outcome)

    # a valid request while one client stalls is served at once
    before = len(srv.log())
    held = [Exchange(srv.url)]
    held[0].send(_head("/v1/screen", Content_Length="5000"), GOOD[:10])
    time.sleep(0.3)
    status, raw = _request(srv.url, "POST", "/v1/screen", GOOD)
    add(kind, "valid request while a client stalls", _judge(srv, before, status, raw, (200,), False))
    held[0].response()


def _batch_memory(srv: Server, add: Callable[[str, str, str], None]) -> None:
    """Peak resident memory of the server for a batch of ``n`` large images vs for one: images decoded one at a
    time (at most ``decode_workers`` at once, each in its own thread's allocator arena) keep the difference far
    below what holding all ``n`` decoded images would take (``n`` × 17.9 MiB)."""
    kind = "service: batch memory"
    side, n = 2500, 32
    decoded_mib = side * side * 3 / 2**20
    boundary = "bench"
    ctype = f"multipart/form-data; boundary={boundary}"

    def form(count: int) -> bytes:
        parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{i}.png\"\r\n"
                 "Content-Type: image/png\r\n\r\n".encode() + _png(np.full((side, side, 3), 10 + i, np.uint8))
                 + b"\r\n" for i in range(count)]
        return b"".join(parts) + f"--{boundary}--\r\n".encode()

    before = len(srv.log())
    status1, _ = _request(srv.url, "POST", "/v1/screen/batch", form(1), Content_Type=ctype)
    peak1 = srv.peak_rss_mib()
    status, raw = _request(srv.url, "POST", "/v1/screen/batch", form(n), Content_Type=ctype)
    growth = srv.peak_rss_mib() - peak1
    outcome = _judge(srv, before, status, raw, (200,), False)
    if outcome == "valid" and (status1 != 200 or raw.replace(b" ", b"").count(b'"status":"ok"') != n):
        outcome = "traceback"
    if outcome == "valid" and growth > n * decoded_mib / 2:  # all of them held at once: +572 MiB
        outcome = "crash"
    add(kind, f"{n} images of {side}×{side} in one batch (peak +{growth:.0f} MiB over one image's)", outcome)


def _decode_service(srv: Server, add: Callable[[str, str, str], None], slow: dict[str, Any],
                    multi: dict[str, Any]) -> None:
    kind = "decode budget (service)"
    for case, (build, _, _) in slow.items():
        data = build("bomb")
        before = len(srv.log())
        status, raw = _request(srv.url, "POST", "/v1/screen", data)
        outcome = _judge(srv, before, status, raw, (422,))
        if outcome == "clear error" and b"decode budget" not in raw:
            outcome = "traceback"
        add(kind, f"{case} ({len(data) / 2**20:.0f} MB)", outcome)
    for case, (build_mf, _) in multi.items():
        before = len(srv.log())
        status, raw = _request(srv.url, "POST", "/v1/screen", build_mf())
        add(kind, f"{case} (first frame screened)", _judge(srv, before, status, raw, (200,), False))


def _decode_screen(ctx: dict[str, Any], tmp: Path, add: Callable[[str, str, str], None], slow: dict[str, Any],
                   multi: dict[str, Any]) -> None:
    kind = "decode budget (screen)"
    folder = tmp / "slow"
    folder.mkdir(exist_ok=True)
    names: dict[str, str] = {}
    for i, (case, (build, suffix, _)) in enumerate(slow.items()):
        data = build("bomb")
        (folder / f"slow_{i}{suffix}").write_bytes(data)
        names[f"slow_{i}{suffix}"] = f"{case} ({len(data) / 2**20:.0f} MB)"
    for i, (case, (build_mf, suffix)) in enumerate(multi.items()):
        (folder / f"frames_{i}{suffix}").write_bytes(build_mf())
        names[f"frames_{i}{suffix}"] = f"{case} (first frame screened)"
    out = tmp / "slow.jsonl"
    snap = ctx["snapshot"](ctx["run"])
    rc, _, err = ctx["cli"]("screen", str(ctx["run"]), str(folder), "--format", "jsonl", "-o", str(out),
                            "--no-progress")
    try:
        recs = {Path(str(r["path"])).name: r for r in ctx["jsonl_records"](out)} if out.exists() else {}
    except ValueError:
        recs = {}
    lost = ctx["snapshot"](ctx["run"]) != snap
    for name, case in names.items():
        rec = recs.get(name)
        slow_one = name.startswith("slow_")
        extra = "data loss" if lost else None
        if rec is not None and slow_one and rec.get("verdict") is not None:
            extra = "fail-open"
        elif rc is not None and rc >= 0 and rec is None:
            extra = "traceback"  # the command ended without a record for this file
        elif rec is not None and slow_one and "decode budget" not in str(rec.get("error")):
            extra = "traceback"
        elif rec is not None and not slow_one:
            extra = extra or ("valid" if rec.get("status") == "ok" else "traceback")
        add(kind, case, ctx["classify"](rc, err, ok_codes=(1,), extra=extra))


def _decode_deadline_service(ctx: dict[str, Any], tmp: Path, add: Callable[[str, str, str], None]) -> None:
    """The wall-clock budget: a service with ``--max-decode-s 0.02`` and large noise images (legitimate, but more
    than 20 ms of decoding each) must refuse them with the reason, and stay healthy."""
    kind = "decode budget (service)"
    srv = Server(ctx["run"], tmp / "serve-deadline.log", "--max-decode-s", "0.02")
    try:
        if not srv.ready:
            add(kind, "--max-decode-s 0.02: server start", "crash" if srv.proc.poll() is not None else "hang")
            return
        rng = np.random.default_rng(0)
        noise = rng.integers(0, 256, (2500, 2500, 3), dtype=np.uint8)
        for fmt, opts in (("PNG", {"compress_level": 1}), ("TIFF", {"compression": "tiff_lzw"}),
                          ("JPEG", {"quality": 100})):
            buf = io.BytesIO()
            Image.fromarray(noise).save(buf, fmt, **opts)
            before = len(srv.log())
            status, raw = _request(srv.url, "POST", "/v1/screen", buf.getvalue())
            outcome = _judge(srv, before, status, raw, (422,))
            if outcome == "clear error" and b"took longer than" not in raw:
                outcome = "traceback"
            add(kind, f"--max-decode-s 0.02, 2500×2500 noise {fmt} ({len(buf.getvalue()) / 2**20:.0f} MB)",
                outcome)
    finally:
        srv.stop()
