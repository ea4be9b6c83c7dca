"""Load test of `l2ood serve` on loopback (bounded, self-stopping) against `l2ood screen` on the same images.

    python benchmarks/serve_load.py [--out docs/DEPLOYMENT.md] [--requests 2000] [--memory-requests 10000]

Trains a throw-away ResNet18 (width 16, the demo's size) for one epoch on generated 28×28 gratings, calibrates
it, writes 500 PNG files, then:

* batch baseline: `l2ood screen` over the 500 files (images/s, from its own wall time without start-up);
* the service (one uvicorn process, micro-batching on) at 1, 8 and 32 concurrent clients: requests/s and p50/p99
  latency over ``--requests`` requests each (every request one PNG, raw body);
* memory: the server's resident set size sampled every 1 000 requests over ``--memory-requests`` requests at
  32 clients (stable = no growth beyond noise).

Server and clients share this machine's 2 cores, so the figures are a lower bound for a dedicated server.
Writes the measured section of docs/DEPLOYMENT.md between markers and a screenshot of the review page.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _docsection import replace_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- serve-load:begin -->", "<!-- serve-load:end -->"


def _cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "CPU")
    return f"{name} ({'AVX-512-BF16' if 'avx512_bf16' in info else 'no AVX-512-BF16'}), {os.cpu_count()} cores"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _load(url: str, bodies: list[bytes], n: int, clients: int, on_done: object = None) -> list[float]:
    import httpx

    lat: list[float] = []
    counter = {"i": 0}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as c:
        async def worker() -> None:
            while counter["i"] < n:
                i = counter["i"]
                counter["i"] += 1
                t0 = time.perf_counter()
                r = await c.post(f"{url}/v1/screen", content=bodies[i % len(bodies)],
                                 headers={"content-type": "image/png"})
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"status {r.status_code}: {r.text[:200]}")
                if on_done is not None:
                    on_done(len(lat))  # type: ignore[operator]

        await asyncio.gather(*(worker() for _ in range(clients)))
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "docs" / "DEPLOYMENT.md"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--memory-requests", type=int, default=10000)
    args = ap.parse_args()
    from tests.conftest import make_pattern_images, wait_ready, write_idx_dataset

    tmp = Path(tempfile.mkdtemp(prefix="l2ood-serve-"))
    env = {**os.environ, "L2OOD_CACHE": str(tmp / "cache")}
    write_idx_dataset(tmp / "data" / "fashion-mnist", 6000, 1000, "bars", seed=10)
    py = [sys.executable, "-m", "l2ood"]
    subprocess.run([*py, "train", "--data-root", str(tmp / "data"), "--epochs", "1", "--width", "16", "--holdout",
                    "1000", "--out", str(tmp / "run"), "--no-progress"], check=True, env=env)
    subprocess.run([*py, "calibrate", str(tmp / "run"), "--data-root", str(tmp / "data"), "--no-progress"],
                   check=True, env=env)
    imgs = tmp / "imgs"
    imgs.mkdir()
    x, _ = make_pattern_images(400, seed=5)
    for i, a in enumerate(x):
        Image.fromarray(a).save(imgs / f"id_{i:03d}.png")
    rng = np.random.default_rng(0)
    for i in range(100):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(imgs / f"noise_{i:03d}.png")
    files = sorted(imgs.glob("*.png"))
    bodies = [f.read_bytes() for f in files]

    # batch baseline: screen the same files (time inside one process, start-up excluded)
    code = ("import time, sys\nfrom l2ood.screen import Screener\n"
            f"s = Screener.from_run({str(tmp / 'run')!r})\nfiles = {[str(f) for f in files]!r}\n"
            "list(s.screen(files[:32]))\nt0 = time.perf_counter(); n = sum(1 for _ in s.screen(files))\n"
            "print(n / (time.perf_counter() - t0))")
    batch_ips = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     env=env).stdout.strip().splitlines()[-1])

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*py, "serve", str(tmp / "run"), "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    mem: list[tuple[int, float]] = []
    try:
        import httpx

        if not wait_ready(url, 120):
            raise RuntimeError("the service did not become ready")
        asyncio.run(_load(url, bodies, 200, 8))  # warm-up
        for clients in (1, 8, 32):
            t0 = time.perf_counter()
            lat = asyncio.run(_load(url, bodies, args.requests, clients))
            dt = time.perf_counter() - t0
            q = statistics.quantiles(lat, n=100)
            rows.append((clients, len(lat) / dt, 1000 * statistics.median(lat), 1000 * q[98]))
            print(rows[-1], flush=True)
        mem.append((0, _rss_mib(server.pid)))

        def sample(done: int) -> None:
            if done % 1000 == 0:
                mem.append((done, _rss_mib(server.pid)))

        asyncio.run(_load(url, bodies, args.memory_requests, 32, sample))
        info = httpx.get(f"{url}/v1/info", timeout=10).json()["stats"]
        review = httpx.get(f"{url}/review", timeout=30).text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    shot = ROOT / "docs" / "review.png"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        page = tmp / "review.html"
        page.write_text(review)
        subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                        f"--user-data-dir={tmp / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1000",
                        page.as_uri()], capture_output=True, timeout=120)
    write_doc(Path(args.out), batch_ips, rows, mem, info, len(files))
    shutil.rmtree(tmp, ignore_errors=True)


def write_doc(out: Path, batch_ips: float, rows: list[tuple[int, float, float, float]], mem: list[tuple[int, float]],
              stats: dict[str, float], n_files: int) -> None:
    from l2ood.provenance import code_version_line

    growth = mem[-1][1] - mem[1][1] if len(mem) > 2 else float("nan")
    text = "\n".join([
        BEGIN,
        "## Measured (loopback load test)",
        "",
        f"`python benchmarks/serve_load.py` on {_cpu()}; {code_version_line()}. Model: ResNet18 width 16, L2 head, "
        f"28×28 gray inputs, calibrated; requests: one PNG each (raw body), cycling over {n_files} files "
        "(400 ID-like gratings, 100 colour noise images of another size). Server and clients share the 2 cores.",
        "",
        f"Batch baseline, `l2ood screen` over the same {n_files} files in one process: **{batch_ips:.0f} images/s**.",
        "",
        "| concurrent clients | requests/s | p50 latency (ms) | p99 latency (ms) |",
        "|---|---|---|---|",
        *[f"| {c} | {r:.0f} | {p50:.1f} | {p99:.1f} |" for c, r, p50, p99 in rows],
        "",
        f"Micro-batching over the whole run: {int(stats['images'])} images in {int(stats['forward_passes'])} forward "
        f"passes (largest batch {int(stats['largest_batch'])}).",
        "",
        f"Server memory (resident set) over {mem[-1][0]} requests at 32 clients, MiB: "
        + ", ".join(f"{m:.0f} (after {n})" for n, m in mem) + f" — growth after the first 1 000: {growth:+.1f} MiB.",
        "",
        "![review page served at /review](review.png)",
        END,
    ])
    replace_section(out, BEGIN, END, text, "Deployment")
    print(text)


if __name__ == "__main__":
    main()
