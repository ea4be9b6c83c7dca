"""``l2ood import``: a run folder for a classifier l2ood did not train.

Every command then works on it as on a trained run — evaluate (all detectors, ``--combine``, ``--val-ood``),
calibrate, screen, serve, export and the bench's post-hoc cells — since the folder holds what they read: the
weights as ``model.safetensors``, a validated ``model.json`` (model config, named preprocessing, the ID data when
given) and an ``imported`` entry that says from what and with which digests. Two kinds of network::

    # (a) a torchvision / timm / l2ood architecture by name + a weights file, head included
    import_classifier("runs/rn18", arch="torchvision:resnet18", weights="resnet18.safetensors",
                      preprocessing="imagenet", class_names=[...], data="imagefolder:/data/train")

    # (b) any nn.Module built by the user's code (package.module:function + JSON keyword arguments)
    import_classifier("runs/mine", factory="mypkg.nets:build", factory_kwargs={"classes": 10},
                      weights="mine.safetensors", preprocessing="cifar")

Weights files are safetensors, or torch checkpoints read with ``torch.load(weights_only=True)`` (no code is ever
unpickled). A run of kind (b) is rebuilt by calling the factory, so it is loaded later only when the user says
they trust that code (``--trust-code``; :mod:`l2ood.models.imported`). The head layer is named, or found: the last
``nn.Linear`` whose output is the model's output. The input is described by a named preset
(:data:`l2ood.data.transforms.PRESETS`: ``imagenet``, ``cifar``, ``unit``) whose fields can be overridden.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.transforms import FITS, PRESETS
from .errors import ConfigError
from .models import Classifier, ModelConfig
from .models.adapters import load_backbone_weights, read_weights_file
from .models.config import ADAPTER_PREFIXES, ARCHITECTURES, TrainConfig
from .models.imported import FACTORY_PREFIX, HookedClassifier, call_factory, factory_sha256, find_head, parse_factory
from .models.pretrained import classifier_from_tensors
from .pipeline import training_data
from .record import (
    DataRecord,
    ImportRecord,
    SourceRecord,
    data_record,
    file_sha256,
    new_record,
    resolve_test,
    write_record,
)
from .run import Run
from .runfolder import check_target, remove_owned, run_lock
from .train.artifact import save_weights

Log = Callable[[str], None] | None


@dataclass(frozen=True)
class InputConfig:
    """What an imported network takes: channels, size ``(H, W)``, the named fit and mean/std on [0, 1]."""

    channels: int
    size: tuple[int, int]
    fit: str
    mean: list[float]
    std: list[float]
    preset: str | None = None

    @classmethod
    def of(cls, preset: str | None = "imagenet", *, channels: int = 3, size: tuple[int, int] | None = None,
           fit: str | None = None, mean: list[float] | None = None, std: list[float] | None = None) -> InputConfig:
        """The named preset with the given fields overridden (``preset=None``: every field given)."""
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"unknown preprocessing preset {preset!r}; known: {', '.join(PRESETS)}")
        p = PRESETS[preset] if preset is not None else None
        if p is None and (size is None or mean is None or std is None):
            raise ConfigError("without a preprocessing preset, give the input size, mean and std")
        size = size or p.size  # type: ignore[union-attr]
        fit = fit or (p.fit if p is not None else "resize")
        if fit not in FITS:
            raise ConfigError(f"fit must be one of {FITS}, got {fit!r}")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        m = list(mean if mean is not None else p.mean)  # type: ignore[union-attr]
        s = list(std if std is not None else p.std)  # type: ignore[union-attr]
        if channels == 1 and mean is None and len(m) == 3:  # an RGB preset for gray input: its luma-weighted mean
            m = [0.299 * m[0] + 0.587 * m[1] + 0.114 * m[2]]
        if channels == 1 and std is None and len(s) == 3:
            s = [0.299 * s[0] + 0.587 * s[1] + 0.114 * s[2]]
        m, s = (m * channels if len(m) == 1 else m), (s * channels if len(s) == 1 else s)
        if len(m) != channels or len(s) != channels:
            raise ConfigError(f"mean and std need {'1 value' if channels == 1 else '1 or 3 values'} each for "
                              f"{channels}-channel input (got {len(m)} and {len(s)})")
        if any(v <= 0 for v in s):
            raise ConfigError(f"std values must be > 0, got {s}")
        return cls(channels, (int(size[0]), int(size[1])), fit, m, s, preset)


def _factory_network(factory: str, kwargs: dict[str, Any] | None, weights: str | Path | None, head: str | None,
                     inp: InputConfig, trust_code: bool | None) -> tuple[HookedClassifier, str, bool]:
    """The user's network (weights loaded), wrapped around its head; ``(model, head name, head found)``."""
    net = call_factory(factory, kwargs, trust_code=trust_code, where=f"factory {factory}")
    if weights is not None:
        left = load_backbone_weights(net, read_weights_file(weights), f"{weights}")
        if left:
            raise ConfigError(f"{weights}: {len(left)} tensor(s) the network built by {factory} does not have "
                              f"(e.g. {left[:3]}); is it a checkpoint of this network (same keyword arguments)?")
    net.eval()
    found = head is None
    if head is None:
        probe = torch.rand(2, inp.channels, *inp.size, generator=torch.Generator().manual_seed(0))
        head = find_head(net, (probe - torch.tensor(inp.mean).view(1, -1, 1, 1)) / torch.tensor(inp.std).view(
            1, -1, 1, 1))
    return HookedClassifier(net, head, mean=inp.mean, std=inp.std).eval(), head, found


def _check_network(model: nn.Module, inp: InputConfig, where: str) -> int:
    """One forward pass on a probe batch: finite logits of the head's width; returns the class count."""
    x = torch.rand(2, inp.channels, *inp.size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = model(x)
    except ConfigError:
        raise
    except Exception as e:  # the user's network on the declared input: any failure is a configuration error
        raise ConfigError(f"{where}: the network fails on a {inp.channels}×{inp.size[0]}×{inp.size[1]} input "
                          f"({type(e).__name__}: {str(e)[:300]}); check the preprocessing (--image-size, "
                          "--channels)") from None
    if not (torch.isfinite(out.logits).all() and torch.isfinite(out.features).all()):
        raise ConfigError(f"{where}: the network's outputs are not finite (NaN or inf) on a probe batch; a broken "
                          "network is never imported")
    return int(out.logits.shape[1])


def import_classifier(out: str | Path, *, weights: str | Path | None = None, arch: str | None = None,
                      factory: str | None = None, factory_kwargs: dict[str, Any] | None = None,
                      head: str | None = None, preprocessing: str | None = "imagenet", channels: int = 3,
                      image_size: tuple[int, int] | None = None, fit: str | None = None,
                      mean: list[float] | None = None, std: list[float] | None = None,
                      class_names: list[str] | None = None, data: str | None = None, holdout: int = 0,
                      test_data: str | None = None, data_root: str | Path | None = None, data_path: str = "memory",
                      width: int = 64, model: nn.Module | None = None, overwrite: bool = False,
                      trust_code: bool | None = True, log: Log = None) -> Run:
    """Write a run folder at ``out`` for a classifier l2ood did not train (see the module doc); returns it loaded.

    Args:
        weights: safetensors or a ``weights_only`` torch checkpoint; required with ``arch``; with ``factory``,
            ``None`` keeps the weights the factory built.
        arch: ``torchvision:NAME``, ``timm:NAME`` or an l2ood architecture (of ``width``); the head is found among
            the tensors.
        factory: ``package.module:function`` returning the ``nn.Module``; ``factory_kwargs`` its JSON keyword
            arguments (recorded).
        head: the head layer's name in the factory's module (default: found).
        preprocessing: a preset of :data:`l2ood.data.transforms.PRESETS`; ``channels``, ``image_size``, ``fit``,
            ``mean``, ``std`` override its fields.
        class_names: one name per class (checked against the head).
        data: the ID training data (a data spec), used to fit detectors (Mahalanobis, KNN, ...); ``holdout``
            images of it are kept apart for calibration; ``test_data`` the ID test data (default: ``data``'s test
            split, else the holdout).
        model: with ``factory``, the network already built (its weights are saved; the factory is recorded so the
            run can be rebuilt), e.g. from :meth:`l2ood.posthoc.PostHoc.save`.
        trust_code: at import the caller names the factory, so it is trusted by default.
    """
    out = Path(out)
    if (arch is None) == (factory is None):
        raise ConfigError("give exactly one of arch (a torchvision/timm/l2ood architecture name) and factory "
                          "(package.module:function)")
    if arch is not None and weights is None:
        raise ConfigError(f"{arch}: give the weights file (safetensors, or a torch checkpoint)")
    if arch is not None and head is not None:
        raise ConfigError("--head names a layer of a factory's network; with an architecture name the head is "
                          "found among the weights")
    if arch is not None and arch not in ARCHITECTURES and not arch.startswith(ADAPTER_PREFIXES):
        raise ConfigError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}, torchvision:NAME, "
                          "timm:NAME (or import your own network with a factory)")
    if factory is not None:
        parse_factory(factory)
    inp = InputConfig.of(preprocessing, channels=channels, size=image_size, fit=fit, mean=mean, std=std)
    check_target(out, overwrite=overwrite)
    head_found = False
    net: Classifier | HookedClassifier
    if arch is not None:
        assert weights is not None
        if width != 64 and arch.startswith(ADAPTER_PREFIXES):
            raise ConfigError(f"--width applies to l2ood's own architectures, not to {arch}")
        cfg = ModelConfig(arch=arch, width=width, head="ce", num_classes=2, in_channels=inp.channels,
                          image_size=inp.size, mean=inp.mean, std=inp.std)
        net, cfg, head_name = classifier_from_tensors(cfg, read_weights_file(weights), f"{weights}")
        source = arch
    else:
        assert factory is not None
        spec = factory if factory.startswith(FACTORY_PREFIX) else FACTORY_PREFIX + factory
        if model is not None:
            if head is None:
                raise ConfigError("name the head layer of the given model")
            net, head_name = HookedClassifier(model, head, mean=inp.mean, std=inp.std).eval(), head
        else:
            net, head_name, head_found = _factory_network(spec, factory_kwargs, weights, head, inp, trust_code)
        cfg = ModelConfig(arch=spec, head="ce", num_classes=int(net.fc.out_features), in_channels=inp.channels,
                          image_size=inp.size, mean=inp.mean, std=inp.std, head_layer=head_name,
                          factory_kwargs=dict(factory_kwargs or {}))
        source = spec
    try:
        k = _check_network(net.cpu().float(), inp, source)
        if k != cfg.num_classes:
            raise ConfigError(f"{source}: the network outputs {k} logits but its head has {cfg.num_classes} classes")
        if class_names is not None:
            if len(class_names) != k:
                raise ConfigError(f"{len(class_names)} class names for a head of {k} classes")
            cfg.class_names = list(class_names)
        cfg.validate()
        drec = _data_record(data, holdout, test_data, data_root, data_path, inp, log)
        origin = ImportRecord(source=source, weights_file=str(Path(weights).absolute()) if weights else None,
                              weights_file_sha256=file_sha256(Path(weights)) if weights else None,
                              factory_sha256=factory_sha256(source) if factory is not None else None,
                              head_layer=head_name, head_found=head_found, preset=inp.preset)
        with run_lock(out, "l2ood import"):
            if overwrite and out.is_dir():
                remove_owned(out)  # replaced as a whole: no calibration, fitted file or cache of the old weights
            path = save_weights(out, net)  # type: ignore[arg-type]
            rec = new_record(cfg, TrainConfig(epochs=1, seed=0), drec, weights_sha256=file_sha256(path), history=[],
                             runtime="imported", fit=inp.fit)
            write_record(out, rec.model_copy(update={"imported": origin, "train_seconds": None}))
    finally:
        if isinstance(net, HookedClassifier) and model is not None:  # the caller's own module keeps no hook
            net.release()  # of this import's wrapper
    if log:
        log(f"imported {source} ({k} classes, head {head_name!r}{' found' if head_found else ''}) into {out}")
    return Run.load(out, trust_code=True if factory is not None and trust_code is not False else trust_code,
                    data_root=data_root)


def _data_record(data: str | None, holdout: int, test_data: str | None, root: str | Path | None, data_path: str,
                 inp: InputConfig, log: Log) -> DataRecord:
    """The record of the ID data: training split (+ holdout, fingerprinted) when given, else the test data alone."""
    if data is not None:
        train, _ = training_data(data, holdout=holdout, root=root, size=inp.size, data_path=data_path)
        if train.labels is None or train.num_classes < 1:
            raise ConfigError(f"{data}: the ID training data need labels")
        train = train.formatted(inp.channels, inp.size)  # fingerprinted as the run will read it (its input format)
        if log:
            log(f"ID data: {len(train)} training images of {data}" + (f", {holdout} held out" if holdout else ""))
        return data_record(train, test_data)
    if holdout:
        raise ConfigError("--holdout needs --data (the ID training data to hold images out of)")
    test, origin = resolve_test(None, None, test_data, None if root is None else str(root))
    return DataRecord(train=None, n_train=0, test=SourceRecord.of(test) if test else None,
                      test_origin=origin)  # type: ignore[arg-type]


__all__ = ["InputConfig", "import_classifier"]
