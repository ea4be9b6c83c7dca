"""A torch-only reproducer for the native crash in ``loss.backward()`` reported for narrow ResNet18s under CPU bf16
autocast + channels_last (issue 24): "double free or corruption" (SIGABRT), once SIGSEGV.

    python benchmarks/native_crash.py [--steps 3] [--json docs/results/native_crash.json]

Each configuration (width, input side, batch size, precision, memory format) trains a CIFAR-style ResNet18 —
written out here with plain torch, nothing of l2ood is imported — for a few steps in its own subprocess, and the
exit status is reported: ``ok``, or the signal that killed it. The table names the CPU, its ISA as oneDNN sees it
(``torch.backends.cpu.get_cpu_capability()``) and whether oneDNN has native bf16 kernels, since the crash was seen
only where it has (AVX-512-BF16 / AMX); without them bf16 autocast takes other kernels. A second table runs single
convolutions (the minimal reproducer): the crash is the backward pass of a 1×1 convolution with stride 2 and fewer
than 16 input channels in channels_last format, in fp32 as in bf16 — the shortcut of a CIFAR ResNet narrower than
width 16. l2ood's guard: :meth:`l2ood.runtime.Runtime.for_model`.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, torch
from torch import nn
width, side, bs, prec, fmt, steps = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5],
                                    int(sys.argv[6]))

class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); self.b2 = nn.BatchNorm2d(cout)
        self.sc = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    def forward(self, x):
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.sc(x))

class ResNet18(nn.Module):  # the CIFAR variant: 3x3 stem, no max-pool, widths w, 2w, 4w, 8w
    def __init__(self, w, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        layers, cin = [], w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(8 * w, classes)
    def forward(self, x):
        z = self.layers(self.stem(x)).mean((2, 3))
        return self.fc(z / z.norm(dim=1, keepdim=True).clamp_min(1e-12))  # the L2 head

torch.manual_seed(0)
m = ResNet18(width)
if fmt == "channels_last":
    m = m.to(memory_format=torch.channels_last)
opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True)
for _ in range(steps):
    x = torch.rand(bs, 3, side, side)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
        loss = nn.functional.cross_entropy(m(x).float(), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print("ok", float(loss))
"""

#: the configurations of the report (crashed: width 8 at 224 / 128 px with bf16 + channels_last; width 4/8 with odd
#: batch sizes) and their neighbours that did not (fp32, width 16, 64 px, contiguous)
CONFIGS = [
    (8, 224, 16, "bf16", "channels_last"), (8, 128, 32, "bf16", "channels_last"), (8, 128, 33, "bf16", "channels_last"),
    (4, 32, 33, "bf16", "channels_last"), (8, 32, 7, "bf16", "channels_last"), (4, 32, 127, "bf16", "channels_last"),
    (8, 128, 32, "fp32", "channels_last"), (16, 128, 32, "bf16", "channels_last"), (8, 64, 32, "bf16", "channels_last"),
    (8, 128, 32, "bf16", "contiguous"),
]


#: the minimal reproducer: one convolution's backward pass (no model), in channels_last unless said otherwise
OP_CHILD = r"""
import sys, torch
from torch import nn
cin, cout, k, stride, side, bs, prec, fmt = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                             int(sys.argv[5]), int(sys.argv[6]), sys.argv[7], sys.argv[8])
torch.manual_seed(0)
mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False).to(memory_format=mf)
for _ in range(3):
    x = torch.rand(bs, cin, side, side).to(memory_format=mf)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
        y = conv(x)
    y.float().sum().backward()
print("ok")
"""

#: (in channels, out channels, kernel, stride, side, batch, precision, memory format): the ResNet shortcut (1×1,
#: stride 2) below and at 16 input channels, and its neighbours (stride 1, 3×3, contiguous, a small image)
OP_CONFIGS = [
    (8, 16, 1, 2, 128, 32, "fp32", "channels_last"), (8, 16, 1, 2, 128, 32, "bf16", "channels_last"),
    (4, 8, 1, 2, 128, 32, "fp32", "channels_last"), (15, 32, 1, 2, 128, 32, "fp32", "channels_last"),
    (16, 32, 1, 2, 128, 32, "fp32", "channels_last"), (8, 16, 1, 1, 128, 32, "fp32", "channels_last"),
    (8, 16, 3, 2, 128, 32, "fp32", "channels_last"), (8, 16, 1, 2, 128, 32, "fp32", "contiguous"),
    (8, 16, 1, 2, 32, 32, "fp32", "channels_last"), (8, 16, 1, 2, 48, 32, "fp32", "channels_last"),
]


def outcome(rc: int | None) -> str:
    if rc is None:
        return "timeout"
    if rc == 0:
        return "ok"
    if rc < 0:
        return signal.Signals(-rc).name
    return f"exit {rc}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from l2ood.provenance import cpu_name

    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    env = {"cpu": cpu_name(), "machine": platform.machine(), "torch": torch.__version__,
           "isa": torch.backends.cpu.get_cpu_capability(), "onednn_native_bf16": native}
    print(json.dumps(env))
    rows = []
    for width, side, bs, prec, fmt in CONFIGS:
        try:
            p = subprocess.run([sys.executable, "-c", CHILD, str(width), str(side), str(bs), prec, fmt,
                                str(args.steps)], capture_output=True, text=True, timeout=args.timeout)
            rc: int | None = p.returncode
            tail = (p.stderr.strip().splitlines() or [""])[-1][:160]
        except subprocess.TimeoutExpired:
            rc, tail = None, ""
        rows.append({"width": width, "side": side, "batch": bs, "precision": prec, "format": fmt,
                     "outcome": outcome(rc), "stderr_tail": tail if rc else ""})
        print(f"width {width:3d}  {side:4d} px  batch {bs:4d}  {prec:5s} {fmt:14s} -> {rows[-1]['outcome']}",
              flush=True)
    ops = []
    for cin, cout, k, stride, side, bs, prec, fmt in OP_CONFIGS:
        try:
            p = subprocess.run([sys.executable, "-c", OP_CHILD, *map(str, (cin, cout, k, stride, side, bs)), prec,
                                fmt], capture_output=True, text=True, timeout=args.timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = None
        ops.append({"in": cin, "out": cout, "kernel": k, "stride": stride, "side": side, "batch": bs,
                    "precision": prec, "format": fmt, "outcome": outcome(rc)})
        print(f"conv {cin:3d}->{cout:3d} {k}x{k} stride {stride}  {side:4d} px  batch {bs:3d}  {prec:5s} {fmt:14s} "
              f"-> {ops[-1]['outcome']}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"env": env, "steps": args.steps, "rows": rows, "ops": ops},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
