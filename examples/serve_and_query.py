"""Run the screening service for a calibrated run on loopback and query it over HTTP.

    python examples/serve_and_query.py RUN IMAGE [IMAGE ...]
    python examples/serve_and_query.py --small          # trains + calibrates a tiny run on generated data, ~30 s

In production run `l2ood serve RUN --host 0.0.0.0` with L2OOD_SERVE_TOKEN set, behind HTTPS.

Extra: ``serve`` plus the HTTP client httpx (``pip install 'l2ood[serve]' httpx``).
"""

from __future__ import annotations

import argparse
import io
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _extras import need

need("serve", "fastapi", "uvicorn", "multipart", "httpx", pip="pip install 'l2ood[serve]' httpx")

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from _data import gratings, noise, write_folder  # noqa: E402
from PIL import Image  # noqa: E402

from l2ood.deploy.service import ServeConfig, create_app  # noqa: E402
from l2ood.screen import Screener  # noqa: E402


def _png(a: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")  # type: ignore[arg-type]
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?")
    ap.add_argument("images", nargs="*")
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    run, bodies = args.run, [(Path(p).name, Path(p).read_bytes()) for p in args.images]
    if args.small or run is None:
        tmp = Path(tempfile.mkdtemp(prefix="l2ood-serve-example-"))
        data = write_folder(tmp / "photos")
        run = str(tmp / "run")
        py = [sys.executable, "-m", "l2ood"]
        subprocess.run([*py, "train", "--dataset", f"imagefolder:{data}", "--epochs", "8", "--width", "8",
                        "--holdout", "40", "--out", run, "--no-progress"], check=True)
        subprocess.run([*py, "calibrate", run, "--no-progress"], check=True)
        bodies = [(f"photo_{i}.png", _png(a)) for i, a in enumerate(gratings(4, seed=9)[0])]
        bodies += [(f"odd_{i}.png", _png(a)) for i, a in enumerate(noise(4))]
    token = secrets.token_hex(16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(Screener.from_run(run), ServeConfig(token=token), run_label=run)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url, auth = f"http://127.0.0.1:{port}", {"authorization": f"Bearer {token}"}
    while not server.started:
        time.sleep(0.05)
    try:
        print("ready:", httpx.get(f"{url}/ready").json())
        for name, body in bodies[:2]:  # one at a time, raw body
            r = httpx.post(f"{url}/v1/screen", content=body, headers={**auth, "x-filename": name})
            print(name, r.status_code, {k: r.json()[k] for k in ("verdict", "score", "p_value", "pred_name")})
        r = httpx.post(f"{url}/v1/screen/batch", files=[("files", (n, b, "image/png")) for n, b in bodies],
                       headers=auth)
        for rec in r.json()["results"]:
            print(f"{rec['path']:14s} {rec['verdict']:4s} score {rec['score']:.3f} p {rec['p_value']:.3f}")
        print("without the token:", httpx.post(f"{url}/v1/screen", content=bodies[0][1]).status_code)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


if __name__ == "__main__":
    main()
