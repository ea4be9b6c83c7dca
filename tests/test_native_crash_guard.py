"""The native-crash guard (issue 24): oneDNN's channels_last backward of a strided 1×1 convolution with fewer than 16
input channels corrupts the heap on AVX-512 CPUs (benchmarks/native_crash.py reproduces it with plain torch).
l2ood keeps such models in the contiguous format on CPU, so the configurations that used to abort train cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from l2ood.models import ModelConfig, build_model
from l2ood.runtime import MIN_SAFE_CHANNELS, Runtime, crash_prone_layers, resolve_runtime


def test_crash_prone_layers_are_the_narrow_strided_pointwise_convs() -> None:
    net = nn.Sequential(nn.Conv2d(8, 16, 1, 2), nn.Conv2d(16, 16, 1, 2), nn.Conv2d(8, 8, 3, 2), nn.Conv2d(8, 8, 1, 1))
    assert crash_prone_layers(net) == ["0"]  # 1×1, stride 2, 8 < 16 inputs; the others are safe
    assert MIN_SAFE_CHANNELS == 16
    assert crash_prone_layers(build_model(ModelConfig(width=8))) == ["backbone.layers.2.shortcut.0"]
    assert len(crash_prone_layers(build_model(ModelConfig(width=4)))) == 2
    assert crash_prone_layers(build_model(ModelConfig(width=16))) == []


def test_runtime_turns_channels_last_off_only_where_needed() -> None:
    cl = Runtime(torch.device("cpu"), torch.bfloat16, True)
    narrow, wide = build_model(ModelConfig(width=8)), build_model(ModelConfig(width=16))
    g = cl.for_model(narrow)
    assert not g.channels_last and g.amp_dtype == torch.bfloat16
    assert g.describe() == "cpu / bf16 / contiguous: 1 narrow strided 1x1 conv"
    assert cl.for_model(wide) is cl and cl.describe() == "cpu / bf16 / channels_last"
    fp32 = resolve_runtime("cpu", "fp32")
    assert fp32.for_model(narrow) is fp32  # nothing to guard without channels_last


CHILD = r"""
import sys, json, torch
from l2ood.data import ImageSet
from l2ood.models import ModelConfig
from l2ood.train import TrainConfig, train
width, side, bs, n = map(int, sys.argv[1:5])
g = torch.Generator().manual_seed(0)
ds = ImageSet("rand", torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8),
              torch.arange(n) % 4, hflip=True)
res = train(ds, ModelConfig(width=width, head="l2", num_classes=4, in_channels=3),
            TrainConfig(epochs=1, batch_size=bs, precision="bf16", seed=0), sys.argv[5], progress=False, log=None)
print(json.dumps({"runtime": json.load(open(sys.argv[5] + "/model.json"))["provenance"]["runtime"]}))
"""


@pytest.mark.parametrize(("width", "side", "bs", "n"), [(8, 128, 32, 64), (4, 32, 33, 99), (8, 32, 7, 21)])
def test_former_crash_configurations_train_cleanly(tmp_path: Path, width: int, side: int, bs: int, n: int) -> None:
    """Each used to end in SIGABRT/SIGSEGV inside loss.backward() under bf16 + channels_last on an AVX-512-BF16
    CPU (docs/RELIABILITY.md); in its own process, so a native crash fails this test instead of the suite."""
    r = subprocess.run([sys.executable, "-c", CHILD, str(width), str(side), str(bs), str(n), str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    runtime = json.loads(r.stdout.strip().splitlines()[-1])["runtime"]
    assert runtime.startswith("cpu / bf16 / contiguous: ")
