"""One convention across commands: named recipes for `train`, padding that follows the image size, defaults said
once in --help, metavars that say what an option takes, and warnings or errors instead of silent fallbacks."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from l2ood.bench.definitions import RECIPES
from l2ood.cli import main
from l2ood.cli.main import TRAIN_RECIPE, _configs, build_parser
from l2ood.data.transforms import scaled_pad
from l2ood.errors import ConfigError


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_train_takes_bench_recipes_and_overrides() -> None:
    m, t = _configs(_parse("train"), "l2", (32, 32))
    rec = RECIPES[TRAIN_RECIPE]
    assert (m.arch, m.width, t.epochs, t.batch_size, t.lr, t.weight_decay, t.schedule, t.pad) == (
        rec["arch"], rec["width"], rec["epochs"], rec["batch_size"], rec["lr"], rec["weight_decay"], rec["schedule"],
        rec["pad"])
    assert t.extra["recipe"] == TRAIN_RECIPE
    m, t = _configs(_parse("train", "--recipe", "paper-resnet18"), "ce", (32, 32))
    assert (m.width, t.epochs, t.pad, m.head) == (64, 60, 4, "ce")
    m, t = _configs(_parse("train", "--recipe", "paper-resnet18", "--epochs", "3", "--width", "8", "--lr", "0.05",
                           "--pad", "2", "--batch-size", "64"), "l2", (32, 32))
    assert (m.width, t.epochs, t.lr, t.pad, t.batch_size) == (8, 3, 0.05, 2, 64)
    with pytest.raises(SystemExit):  # a pretrained-only recipe cannot be trained
        _parse("train", "--recipe", "pretrained-resnet50")


@pytest.mark.parametrize(("side", "pad"), [(32, 4), (28, 4), (64, 8), (224, 28), (8, 1), (16, 2)])
def test_pad_auto_follows_the_image_size(side: int, pad: int) -> None:
    assert scaled_pad(4, (side, side)) == pad
    _, t = _configs(_parse("train"), "l2", (side, side))
    assert t.pad == pad
    _, t = _configs(_parse("train", "--pad", "0"), "l2", (side, side))
    assert t.pad == 0


def test_width_with_an_external_backbone_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="drop --width"):
        _configs(_parse("train", "--arch", "timm:resnet18", "--width", "8"), "l2", (224, 224))
    m, _ = _configs(_parse("train", "--arch", "torchvision:resnet18"), "l2", (224, 224))
    assert m.arch == "torchvision:resnet18"
    assert main(["train", "--arch", "timm:resnet18", "--width", "8"]) == 2  # before any data is read
    err = capsys.readouterr().err
    assert "drop --width" in err and err.count("\n") == 1


def test_run_name_has_no_width_for_external_backbones() -> None:
    from l2ood.cli.main import _run_name

    assert _run_name(_parse("train", "--width", "8"), "l2") == "runs/fashion-mnist-l2-w8-s0"
    assert _run_name(_parse("train", "--arch", "torchvision:resnet18", "--seed", "3"), "ce") == \
        "runs/fashion-mnist-ce-s3"


def test_train_records_the_recipe_and_the_pad(tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data-root", str(data_root), "--epochs", "1", "--width", "2", "--holdout", "0",
                 "--out", str(out), "--no-progress", "--precision", "fp32"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["recipe"] == TRAIN_RECIPE
    assert meta["train"]["pad"] == 4 and meta["train"]["epochs"] == 1  # 28 px Fashion-MNIST: 4 px


def test_photo_folder_without_image_size_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    for k in range(2):
        (tmp_path / "photos" / f"c{k}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(
                tmp_path / "photos" / f"c{k}" / f"{i}.png")
    argv = ["train", "--dataset", f"imagefolder:{tmp_path / 'photos'}", "--epochs", "1", "--width", "2",
            "--holdout", "0", "--no-progress", "--precision", "fp32"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "decoded into memory at 32x32 px because no --image-size was given" in err and "--image-size PX" in err
    assert main([*argv, "--out", str(tmp_path / "b"), "--image-size", "16"]) == 0
    assert "no --image-size" not in capsys.readouterr().err


def _commands() -> dict[str, argparse.ArgumentParser]:
    ap = build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _option_blocks(text: str) -> list[str]:
    """The help text of each option (its first line starts with two spaces and a dash)."""
    blocks: list[str] = []
    for line in text.splitlines():
        if re.match(r"^  -", line):
            blocks.append(line)
        elif blocks and line.startswith("   "):
            blocks[-1] += " " + line.strip()
        else:
            blocks.append("")
    return [b for b in blocks if b]


def test_help_says_each_default_once_and_never_none() -> None:
    for name, p in _commands().items():
        text = p.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
        for block in _option_blocks(text):
            assert block.lower().count("(default") <= 1, (name, block)
            assert "default" not in block.lower() or block.lower().count("default") <= 2, (name, block)


def test_help_metavars_say_what_options_take() -> None:
    cmds = _commands()
    cal = cmds["calibrate"].format_help()
    assert "--calibration-data SPEC" in cal and "--detectors NAME[,NAME...]" in cal
    assert "--detector " not in cal  # the old spelling still parses, but is not advertised
    assert "--out DIR" in cmds["train"].format_help() and "--pad PX|auto" in cmds["train"].format_help()
    assert "--port PORT" in cmds["serve"].format_help()
    for name, p in cmds.items():  # no option shows argparse's upper-cased dest as its metavar
        for a in p._actions:
            if (a.option_strings and a.nargs != 0 and a.choices is None and a.metavar is None
                    and a.help != argparse.SUPPRESS):
                pytest.fail(f"{name} {a.option_strings[0]} has no metavar")


def test_calibrate_detectors_spellings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _parse("calibrate", "r", "--detectors", "knn").detector == "knn"
    assert _parse("calibrate", "r", "--detector", "knn").detector == "knn"  # the old name keeps working
    assert _parse("calibrate", "r", "--combine", "feature_norm,knn").combine == ["feature_norm,knn"]
    rc = main(["calibrate", str(tmp_path), "--combine", "feature_norm,knn", "--combine", "feature_norm,vim"])
    assert rc == 2 and "one screen" in capsys.readouterr().err


def test_every_command_is_documented_and_exit_codes_agree() -> None:
    import sys

    m = sys.modules["l2ood.cli.main"]  # (l2ood.cli.main as an attribute is the entry-point function)
    names = set(_commands())
    assert names == {"train", "import", "evaluate", "demo", "bench", "leaderboard", "analyze", "calibrate", "screen",
                     "serve", "export", "cache"}
    documented = set(re.findall(r"``(\w+)``", (m.__doc__ or "").split("\n\n")[0]))
    assert names <= documented, names - documented
    top = build_parser().format_help()
    assert all(c in top for c in names)
    screen = _commands()["screen"].format_help().replace("\n", " ")
    for code in ("0 =", "1 =", "2 =", "3 =", "130 ="):
        assert code in screen
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for code in ("0", "1", "2", "3", "130"):
        assert re.search(rf"\b{code}\b", readme)


def test_dev_benchmark_is_hidden_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("L2OOD_DEV_BENCHMARKS", raising=False)
    assert "cifar10-local" not in _commands()["bench"].format_help()
    with pytest.raises(SystemExit):
        _parse("bench", "--benchmark", "cifar10-local")
    from l2ood.bench.definitions import get_benchmark

    with pytest.raises(ConfigError, match="L2OOD_DEV_BENCHMARKS=1"):
        get_benchmark("cifar10-local")
    monkeypatch.setenv("L2OOD_DEV_BENCHMARKS", "1")
    assert _parse("bench", "--benchmark", "cifar10-local").benchmark == "cifar10-local"
    assert get_benchmark("cifar10-local")["id"].startswith("imagefolder:")


def test_demo_defaults_are_measured_ones() -> None:
    from l2ood.cli.main import DEMO_EPOCHS, DEMO_PAD, DEMO_SUBSET

    args = _parse("demo")
    assert (args.epochs, args.train_subset, args.pad) == (DEMO_EPOCHS, DEMO_SUBSET, DEMO_PAD)
    _, t = _configs(args, "l2", (28, 28))
    assert (t.epochs, t.pad, t.batch_size) == (DEMO_EPOCHS, DEMO_PAD, 128)
    assert _parse("demo", "--train-subset", "all").train_subset is None
    # the shipped budget is one that was measured, and its row says the message held
    root = Path(__file__).resolve().parents[1]
    measured = json.loads((root / "docs" / "results" / "demo_budget.json").read_text())["configs"]
    key = f"{DEMO_SUBSET}x{DEMO_EPOCHS}x128 --pad {DEMO_PAD}"
    assert measured[key]["message_holds"] and len(measured[key]["seeds"]) >= 3
    assert f"| {key} |" in (root / "docs" / "PERFORMANCE.md").read_text()
