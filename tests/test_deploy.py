"""Deployment: the HTTP service, the review page (in a real headless browser) and the ONNX export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from l2ood.cli import main
from l2ood.run import Run
from l2ood.screen import Screener

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from tests.conftest import wait_ready  # noqa: E402

from l2ood.deploy.service import ServeConfig, check_bind, create_app  # noqa: E402

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_pattern_images, tiny_run

    root = tmp_path_factory.mktemp("deploy")
    tiny_run(root, n_train=400, n_test=100, width=4, holdout=100, epochs=2, calibrate=True)
    imgs = root / "imgs"
    imgs.mkdir()
    x, _ = make_pattern_images(12, seed=99)  # ID-like
    for i, a in enumerate(x):
        Image.fromarray(a).save(imgs / f"id_{i:02d}.png")
    rng = np.random.default_rng(0)
    for i in range(12):  # OoD-like: noise, other size, colour
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(imgs / f"noise_{i:02d}.png")
    (imgs / "zz_broken.png").write_bytes(b"\x89PNG broken")
    return root


def _png(path: Path) -> bytes:
    return path.read_bytes()


def _client(served: Path, **cfg: object) -> TestClient:
    scr = Screener.from_run(served / "run", device="cpu", precision="fp32")
    return TestClient(create_app(scr, ServeConfig(**cfg), run_label="test"))  # type: ignore[arg-type]


def test_service_endpoints(served: Path) -> None:
    imgs = sorted((served / "imgs").glob("*.png"))
    with _client(served) as c:
        assert c.get("/health").json() == {"status": "ok"} and c.get("/ready").json() == {"ready": True}
        r = c.post("/v1/screen", content=_png(imgs[0]), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["status"] == "ok" and rec["verdict"] in ("in", "out") and 0 < rec["p_value"] <= 1
        r2 = c.post("/v1/screen", files={"file": ("a.png", _png(imgs[0]), "image/png")})
        assert r2.json()["score"] == pytest.approx(rec["score"], rel=1e-6)  # raw body and multipart agree
        bad = c.post("/v1/screen", content=b"not an image")
        assert bad.status_code == 422 and bad.json()["status"] == "error" and "not a recognized" in bad.json()["error"]
        files = [("files", (p.name, _png(p), "image/png")) for p in imgs]
        res = c.post("/v1/screen/batch", files=files).json()["results"]
        assert [r["path"] for r in res] == [p.name for p in imgs]
        assert res[-1]["status"] == "error" and all(r["status"] == "ok" for r in res[:-1])
        info = c.get("/v1/info").json()
        assert "rule" in info and info["stats"]["images"] >= len(imgs)
        # the service gives the scores the batch command gives for the same files
        scr = Screener.from_run(served / "run", device="cpu", precision="fp32")
        cli_scores = {Path(r["path"]).name: r["score"] for r in scr.screen([str(p) for p in imgs]) if r["score"]}
        for r in res[:-1]:
            assert r["score"] == pytest.approx(cli_scores[r["path"]], rel=1e-5)
        page = c.get("/review").text
        n_out = sum(r["verdict"] == "out" for r in res if r["status"] == "ok") + (rec["verdict"] == "out") * 2
        assert page.count('<img class="thumb"') == n_out and "zz_broken.png" in page


def test_limits(served: Path) -> None:
    img = _png(sorted((served / "imgs").glob("id_*.png"))[0])
    with _client(served, max_request_bytes=len(img) + 10, max_batch_images=2, max_pixels=100) as c:
        big = c.post("/v1/screen", content=img + bytes(64))
        assert big.status_code == 413
        r = c.post("/v1/screen", content=img)
        assert r.status_code == 422 and "too large" in r.json()["error"]  # 28×28 = 784 pixels > 100
    with _client(served, max_batch_images=2) as c:
        r = c.post("/v1/screen/batch", files=[("files", (f"{i}.png", img, "image/png")) for i in range(3)])
        assert r.status_code == 413


def test_bearer_token(served: Path) -> None:
    img = _png(sorted((served / "imgs").glob("id_*.png"))[0])
    with _client(served, token=TOKEN) as c:
        assert c.get("/health").status_code == 200  # liveness needs no token
        assert c.post("/v1/screen", content=img).status_code == 401
        assert c.post("/v1/screen", content=img, headers={"authorization": "Bearer wrong-token-xxxxxxxx"}
                      ).status_code == 401
        assert c.get("/review").status_code == 401
        ok = c.post("/v1/screen", content=img, headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["status"] == "ok"
    from l2ood.errors import ConfigError

    with pytest.raises(ConfigError, match="without a token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigError, match="without a token"):
        check_bind("192.0.2.10", None)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(ConfigError, match="16 characters"):
        ServeConfig(token="short").validate()


def test_micro_batching_shares_forward_passes(served: Path) -> None:
    imgs = [_png(p) for p in sorted((served / "imgs").glob("id_*.png"))]
    with _client(served, batch_window_ms=200, max_batch=64) as c:
        before = c.get("/v1/info").json()["stats"]["forward_passes"]
        results: list[int] = []

        def hit(b: bytes) -> None:
            results.append(c.post("/v1/screen", content=b).status_code)

        threads = [threading.Thread(target=hit, args=(b,)) for b in imgs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stats = c.get("/v1/info").json()["stats"]
    assert results == [200] * len(imgs)
    passes = stats["forward_passes"] - before
    assert passes < len(imgs) and stats["largest_batch"] > 1, stats  # concurrent requests shared passes


def test_nan_model_answers_503_never_in(served: Path, tmp_path: Path) -> None:
    run = Run.load(served / "run", device="cpu", precision="fp32")
    with torch.no_grad():
        for p in run.model.parameters():
            p.fill_(float("nan"))
    scr = Screener(run, run.calibration())
    img = _png(sorted((served / "imgs").glob("id_*.png"))[0])
    with TestClient(create_app(scr, ServeConfig())) as c:
        r = c.post("/v1/screen", content=img)
        assert r.status_code == 503 and r.json()["verdict"] is None and "non-finite" in r.json()["error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_graceful_shutdown_finishes_requests_in_flight(served: Path) -> None:
    import httpx

    port = _free_port()
    env = {**os.environ, "L2OOD_SERVE_TOKEN": TOKEN}
    p = subprocess.Popen([sys.executable, "-m", "l2ood", "serve", str(served / "run"), "--port", str(port),
                          "--batch-window-ms", "1500", "--device", "cpu", "--precision", "fp32"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(url, 60):
            pytest.fail("the service did not become ready")
        img = _png(sorted((served / "imgs").glob("id_*.png"))[0])
        codes: list[int] = []

        def hit() -> None:
            r = httpx.post(f"{url}/v1/screen", content=img, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)
            codes.append(r.status_code)

        threads = [threading.Thread(target=hit) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the requests now wait in the batcher's 1.5 s window
        p.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=30)
        assert codes == [200] * 4, codes
        rc = p.wait(timeout=30)
        log = p.stdout.read() if p.stdout else ""
        # uvicorn shuts down cleanly, then re-raises the SIGTERM it caught (exit -15), as a process manager expects
        assert rc in (0, -signal.SIGTERM) and "Finished server process" in log, (rc, log[-2000:])
    finally:
        if p.poll() is None:
            p.kill()


# ------------------------------------------------------------------------------------------------ review page

def test_screen_html_review_page_in_a_real_browser(served: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    page = tmp_path / "review.html"
    out = tmp_path / "s.jsonl"
    assert main(["screen", str(served / "run"), str(served / "imgs"), "--format", "jsonl", "-o", str(out),
                 "--html", str(page), "--no-progress", "--html-thumbnails", "50"]) == 1
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    n_out = sum(r["verdict"] == "out" for r in recs)
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text  # offline
    assert text.count('<img class="thumb"') == n_out > 0
    scores = [float(s) for s in __import__("re").findall(r'<span class="score">([-0-9.e+]+)</span>', text)]
    assert scores == sorted(scores)  # most out-of-distribution first
    if chromium is None:
        pytest.skip("no Chromium here (scripts/setup.sh installs it from the Debian packages)")
    profile = tmp_path / "profile"
    r = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", "--dump-dom",
                        page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'data-thumbs="{n_out}"' in r.stdout  # the page's script ran and counted the loaded thumbnails
    console = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    shot = tmp_path / "review.png"
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                    f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()], capture_output=True,
                   timeout=120)
    assert shot.is_file() and Image.open(shot).size == (1200, 900)


# ------------------------------------------------------------------------------------------------ ONNX

def test_onnx_export_matches_pytorch(served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from l2ood.deploy.export import onnx_metadata, verify_onnx

    out = tmp_path / "m.onnx"
    assert main(["export", str(served / "run"), "-o", str(out), "--verify-n", "100",
                 "--data-root", str(served / "data")]) == 0
    assert "same verdict 100.00 %" in capsys.readouterr().out
    meta = onnx_metadata(out)
    run = Run.load(served / "run", device="cpu", precision="fp32")
    assert meta["l2ood.calibration"]["threshold"] == run.calibration().threshold  # type: ignore[union-attr]
    assert meta["l2ood.preprocessing"]["size"] == [28, 28] and meta["l2ood.model"]["head"] == "l2"
    # noise at another size, brought to the model format by the run's preprocessing
    files = sorted((served / "imgs").glob("[in]*_*.png"))
    imgs = torch.cat([run.preprocessing(np.asarray(Image.open(p))) for p in files])
    v = verify_onnx(run, out, imgs)
    assert v["max_rel_score_diff"] < 1e-4 and v["max_abs_logit_diff"] < 1e-3
    assert v["same_class"] == 1.0 and v["same_verdict"] == 1.0
    assert main(["export", str(served / "run"), "-o", str(served / "run" / "model.json")]) == 2  # never over run files



def test_requests_beyond_the_concurrency_limit_get_503(served: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scr = Screener.from_run(served / "run", device="cpu", precision="fp32")
    slow = scr.records

    def slowly(items: list[tuple[str, int | None, object]]) -> list[dict[str, object]]:
        time.sleep(0.8)
        return slow(items)  # type: ignore[arg-type]

    img = _png(sorted((served / "imgs").glob("id_*.png"))[0])
    with TestClient(create_app(scr, ServeConfig(max_in_flight=1))) as c:
        monkeypatch.setattr(scr, "records", slowly)
        first: list[int] = []
        t = threading.Thread(target=lambda: first.append(c.post("/v1/screen", content=img).status_code))
        t.start()
        time.sleep(0.3)
        busy = c.post("/v1/screen", content=img)
        t.join(timeout=30)
    assert first == [200] and busy.status_code == 503 and busy.headers["retry-after"] == "1"


def test_service_with_a_fitted_detector_loads_it_once(served: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(served / "run", run, ignore=shutil.ignore_patterns(".l2ood.lock"))
    assert main(["calibrate", str(run), "--detector", "mahalanobis", "--alpha", "0.1", "--name", "maha",
                 "--data-root", str(served / "data"), "--no-progress", "--precision", "fp32"]) == 0
    from l2ood import columns as fitted_mod

    loads = []
    real = fitted_mod.load_fitted
    monkeypatch.setattr(fitted_mod, "load_fitted", lambda *a, **k: loads.append(a) or real(*a, **k))
    scr = Screener.from_run(run, calibration="maha", device="cpu", precision="fp32")
    imgs = sorted((served / "imgs").glob("*_0*.png"))
    with TestClient(create_app(scr, ServeConfig(), run_label="maha")) as c:
        recs = [c.post("/v1/screen", content=_png(p)).json() for p in imgs]
        info = c.get("/v1/info").json()
    assert len(loads) == 1  # loaded once, by the screener; never per request
    assert "p-value ≤ 0.1" in info["rule"] and all(r["status"] == "ok" for r in recs)
    direct = {Path(r["path"]).name: r for r in scr.screen([str(p) for p in imgs])}
    for p, r in zip(imgs, recs, strict=True):
        assert r["score"] == pytest.approx(direct[p.name]["score"], rel=1e-5)
        assert r["p_value"] == direct[p.name]["p_value"] and r["verdict"] == direct[p.name]["verdict"]
