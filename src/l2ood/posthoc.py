"""Post-hoc OoD detection for any PyTorch classifier whose last layer is linear — and a deployable screen for it.

Name the model's linear head; l2ood reads the penultimate features ``z`` as the head's input (a forward
hook, flattened) and the head's ``W, b``, so every detector works on the user's network unchanged,
including ODIN (the model stays in the loop for its input gradients)::

    from l2ood.posthoc import PostHoc

    ph = PostHoc(my_model, head="fc", detectors=["feature_norm", "energy", "knn", "mahalanobis", "odin"])
    ph.fit(train_loader)            # DataLoader of (images, labels), a Dataset, or an (N, C, H, W) tensor
    scores = ph.score(images)       # {detector: (N,) tensor}, higher = more in-distribution
    ood = ph.evaluate(id_images, {"noise": noise_images})   # AUROC / FPR@95 per detector

**Input.** Without ``preprocessing`` images are passed exactly as the model expects them (float, already
normalized; uint8 images are only scaled to [0, 1]). With ``preprocessing`` (a preset name of
:data:`l2ood.data.transforms.PRESETS` — ``imagenet``, ``cifar``, ``unit`` — or an
:class:`l2ood.importing.InputConfig`) the model is given its input config, as ``l2ood import`` records it:

* l2ood's image sets (:class:`l2ood.data.source.ImageSource`: :class:`~l2ood.data.ImageSet`, a streamed set,
  what :func:`l2ood.data.load_dataset` / :func:`~l2ood.data.source.open_images` return) are brought to the
  input's channels and size as l2ood's runs bring them (``formatted`` + ``batches(fit=...)``);
* uint8 tensors are images: taken as they are when already ``(N, C, H, W)`` of the input format, else
  brought to it through the named fit, as screened files are (:func:`l2ood.data.transforms.convert_format`);
* float tensors are images on the [0, 1] scale in the input format;

and every image is then normalized inside the model, ``x' = (x - mean) / std`` per channel (the
:class:`~l2ood.models.imported.HookedClassifier`'s buffers), so **do not normalize the images yourself**. An image
set without ``preprocessing`` is refused with a :class:`~l2ood.errors.ConfigError` (its uint8 files say nothing
of the normalization the model was trained with).

**Benchmarks and deployment.** With ``preprocessing``, :meth:`PostHoc.evaluate_benchmark` gives the near/far
table of ``l2ood bench`` for the user's model, :meth:`PostHoc.save` writes a run folder through
:func:`l2ood.importing.import_classifier` (then ``l2ood calibrate/screen/serve/export`` work on it) and
:meth:`PostHoc.calibrate` stores a calibration in it exactly as ``l2ood calibrate`` does
(:func:`l2ood.screen.calibrate_run`)::

    ph = PostHoc(net, head="fc", detectors=["mahalanobis"], preprocessing="cifar")
    table = ph.evaluate_benchmark("cifar10", data_root="/data")            # near / far AUROC, FPR@95
    run = ph.save("runs/mine", factory="mypkg.nets:build", data="cifar10", holdout=1000)
    ph.calibrate(run, detector="mahalanobis", tpr=0.95)                    # then: l2ood screen runs/mine ...

The head's output must be the model's output (the logits), as in torchvision's and timm's classifiers
(``fc``, ``head``, ``classifier``, ``classifier.1`` ...).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from .columns import Column
from .data.source import ImageSource, open_images
from .data.transforms import convert_format
from .detectors import DETECTORS, Extraction, Head
from .errors import ConfigError
from .importing import InputConfig
from .metrics import OODMetrics, ood_metrics
from .models.imported import HookedClassifier
from .runtime import Runtime, resolve_runtime

if TYPE_CHECKING:
    from .metrics.conformal import Calibration
    from .run import Run

Log = Callable[[str], None] | None
#: the group metrics of :class:`BenchmarkTable` (means over a group's OoD sets, as ``l2ood bench`` reports them)
GROUP_METRICS = ("auroc", "fpr95_ood_pos", "fpr95")


def _is_image_set(data: Any) -> bool:
    """Whether ``data`` is one of l2ood's image sets (the :class:`~l2ood.data.source.ImageSource` protocol)."""
    return not isinstance(data, Tensor | tuple | list | torch.utils.data.Dataset | torch.utils.data.DataLoader) \
        and isinstance(data, ImageSource)


def _raw_batches(data: Any, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(images, labels or None) batches of a DataLoader, a Dataset, a tensor or an (images, labels) pair."""
    if isinstance(data, Tensor):
        for s in range(0, len(data), batch_size):
            yield data[s : s + batch_size], None
        return
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        if data[1] is not None and len(data[1]) != len(data[0]):
            raise ConfigError(f"{len(data[0])} images but {len(data[1])} labels")
        for s in range(0, len(data[0]), batch_size):
            yield data[0][s : s + batch_size], None if data[1] is None else data[1][s : s + batch_size]
        return
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size)
    if not isinstance(data, Iterable):
        raise ConfigError(f"cannot read images from a {type(data).__name__}: give a tensor, an (images, labels) "
                          "pair, a Dataset, a DataLoader or an l2ood image set (l2ood.data.load_dataset)")
    for item in data:
        if isinstance(item, Tensor):
            yield item, None
        elif isinstance(item, list | tuple) and item and isinstance(item[0], Tensor):
            yield item[0], (torch.as_tensor(item[1]) if len(item) > 1 and isinstance(item[1], Tensor | list)
                            else None)
        elif isinstance(item, Mapping) and isinstance(item.get("image"), Tensor):
            yield item["image"], item.get("label")
        else:
            raise ConfigError(f"cannot read a batch of type {type(item).__name__}; give (images, labels) batches")


@dataclass
class BenchmarkTable:
    """The near/far table of ``l2ood bench`` for one model (:meth:`PostHoc.evaluate_benchmark`).

    Attributes:
        benchmark: the benchmark's name (:data:`l2ood.bench.BENCHMARKS`).
        detectors: the detectors, in order.
        per_set: ``{OoD set: {detector: metrics}}`` (:func:`l2ood.metrics.ood_metrics`: ``auroc``, ``fpr95`` (ID
            positive), ``fpr95_ood_pos`` (OoD positive, OpenOOD v1.5), ``aupr_in``, ``aupr_out``).
        groups: ``{OoD set: group}`` (``near``, ``far``) from the benchmark's definition.
        means: ``{detector: {group: {metric: value}}}`` for :data:`GROUP_METRICS`: the unweighted mean over the
            group's sets, ``m̄_g = (1/|S_g|) Σ_{s ∈ S_g} m_s``, as OpenOOD v1.5 and ``l2ood bench`` report them
            (Zhang et al., "OpenOOD v1.5", 2023).
        id_accuracy: top-1 accuracy on the ID test images (``None`` when they have no labels).
        n: images scored per set (the ID test set under its name too).
        id_name: the ID test set's name.
    """

    benchmark: str
    detectors: list[str]
    per_set: dict[str, dict[str, OODMetrics]]
    groups: dict[str, str]
    means: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    id_accuracy: float | None = None
    n: dict[str, int] = field(default_factory=dict)
    id_name: str = ""

    @property
    def group_names(self) -> list[str]:
        """The groups in the bench's order (near, far, then any other)."""
        return sorted(set(self.groups.values()), key=lambda g: ({"near": 0, "far": 1}.get(g, 2), g))

    def markdown(self) -> str:
        """The table in ``l2ood bench``'s layout (values in %): group AUROC, FPR95 (OoD+, OpenOOD), FPR95 (ID+),
        ID accuracy; then the AUROC of every OoD set."""
        gs = self.group_names
        head = ["detector", *(f"{g} AUROC" for g in gs), *(f"{g} FPR95 (OoD+, OpenOOD)" for g in gs),
                *(f"{g} FPR95 (ID+)" for g in gs), "ID acc"]
        acc = "-" if self.id_accuracy is None else f"{100 * self.id_accuracy:.2f}"
        lines = [f"# {self.benchmark}: ID {self.id_name} ({self.n.get(self.id_name, 0)} test images)", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for d in self.detectors:
            vals = [f"{100 * self.means[d][g][m]:.2f}" for m in ("auroc", "fpr95_ood_pos", "fpr95") for g in gs]
            lines.append(f"| {d} | " + " | ".join(vals) + f" | {acc} |")
        sets = sorted(self.groups, key=lambda s: (gs.index(self.groups[s]), s))
        lines += ["", "| detector | " + " | ".join(f"{s} ({self.groups[s]}, {self.n.get(s, 0)})" for s in sets)
                  + " |", "|" + "---|" * (1 + len(sets))]
        for d in self.detectors:
            lines.append(f"| {d} | " + " | ".join(f"{100 * self.per_set[s][d]['auroc']:.2f}" for s in sets) + " |")
        return "\n".join(lines) + "\n"


def _benchmark_sets(name: str, data_root: str | Path | None) -> tuple[dict[str, Any], str, str, list[tuple[str, str]]]:
    """``(definition, training spec, ID test spec, [(OoD spec, group)])`` of a benchmark of
    :data:`l2ood.bench.BENCHMARKS` (:func:`l2ood.bench.definitions.benchmark_specs`, as ``l2ood bench`` reads it)."""
    from .bench.definitions import benchmark_specs, get_benchmark

    bdef = get_benchmark(name)
    return (bdef, *benchmark_specs(bdef, None if data_root is None else str(data_root)))


class PostHoc:
    """Fit and score l2ood's detectors on a user's classifier (see the module doc).

    Args:
        model: the classifier (its output must be the logits of ``head``).
        head: the name of its last linear layer (``model.get_submodule(head)``) or the layer itself.
        detectors: registered detector names (:data:`l2ood.detectors.DETECTORS`).
        device: where the model runs (``"auto"``: cuda > mps > cpu); the model is moved there.
        batch_size: images per forward pass.
        detector_kwargs: hyper-parameters per detector name (e.g. ``{"knn": {"k": 10}}``).
        preprocessing: the model's input config — a preset name (``"imagenet"``, ``"cifar"``, ``"unit"``) or an
            :class:`l2ood.importing.InputConfig` (channels, size, fit, mean, std). With it, images are given on
            the [0, 1] scale (or as uint8) and normalized inside the model, and l2ood's image sets are accepted
            (see the module doc); :meth:`evaluate_benchmark`, :meth:`save` and :meth:`calibrate` need it.
    """

    def __init__(self, model: nn.Module, head: str | nn.Linear = "fc",
                 detectors: Iterable[str] = ("feature_norm", "energy", "maxlogit", "msp"), *,
                 device: str = "auto", batch_size: int = 256, detector_kwargs: dict[str, dict[str, Any]] | None = None,
                 preprocessing: str | InputConfig | None = None) -> None:
        names = list(detectors)
        unknown = [d for d in names if d not in DETECTORS]
        if unknown:
            raise ConfigError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(DETECTORS)}")
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        if isinstance(preprocessing, str):
            preprocessing = InputConfig.of(preprocessing)
        elif preprocessing is not None and not isinstance(preprocessing, InputConfig):
            raise ConfigError(f"preprocessing must be a preset name or an InputConfig, got "
                              f"{type(preprocessing).__name__}")
        self.preprocessing: InputConfig | None = preprocessing
        self.rt: Runtime = resolve_runtime(device, "fp32")
        inp = preprocessing
        self.net = HookedClassifier(model, head, mean=None if inp is None else inp.mean,
                                    std=None if inp is None else inp.std).to(self.rt.device).eval()
        self.detector_kwargs: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (detector_kwargs or {}).items()}
        self.columns: dict[str, Column] = self._new_columns(names)
        self.batch_size = batch_size
        self.fitted = not any(c.needs_fit for c in self.columns.values())
        self.n_fit = 0  # images the detectors were fitted on (recorded with them by save)
        self._saved: set[Path] = set()  # run folders this object wrote: their factory is the caller's own code

    def _new_columns(self, names: Iterable[str]) -> dict[str, Column]:
        return {d: Column.of(d, "ce", **self.detector_kwargs.get(d, {})) for d in names}

    @property
    def head(self) -> Head:
        return Head(self.net.fc.weight.detach().float().cpu(), self.net.fc.bias.detach().float().cpu()
                    if self.net.fc.bias is not None else torch.zeros(self.net.fc.out_features), "ce")

    # ------------------------------------------------------------------------------------------------ input
    def _need_input(self, what: str) -> InputConfig:
        if self.preprocessing is None:
            raise ConfigError(f"{what} needs the model's input config: pass preprocessing=... to PostHoc (a preset "
                              "name: imagenet, cifar, unit; or l2ood.importing.InputConfig.of(...)), then give images "
                              "on the [0, 1] scale or as uint8 (they are normalized inside the model)")
        return self.preprocessing

    def _input(self, x: Tensor) -> Tensor:
        """One batch as the model's input: uint8 scaled to [0, 1]; with ``preprocessing``, uint8 images of another
        format brought to the input format first (its fit) and float images checked to be in it."""
        inp = self.preprocessing
        if inp is not None:
            if x.ndim == 3:
                x = x[None]
            want = (inp.channels, *inp.size)
            if x.dtype == torch.uint8:
                if tuple(x.shape[1:]) != want:
                    x = convert_format(x.cpu(), inp.channels, inp.size, fit=inp.fit)
            elif x.ndim != 4 or tuple(x.shape[1:]) != want:
                raise ConfigError(f"float images must be (N, {want[0]}, {want[1]}, {want[2]}) on the [0, 1] scale "
                                  f"(the input config); got {tuple(x.shape)}: pass uint8 images to have them "
                                  "converted")
            elif x.numel() and (float(x.min()) < -1e-3 or float(x.max()) > 1 + 1e-3):
                warnings.warn(f"float images outside [0, 1] (min {float(x.min()):.3g}, max {float(x.max()):.3g}): "
                              "with preprocessing=... images are normalized inside the model; do not normalize "
                              "them yourself", stacklevel=4)
        x = x.to(self.rt.device)
        return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()

    def _batches(self, data: Any) -> Iterator[tuple[Tensor, Tensor | None]]:
        """(images, labels or None) batches of any accepted kind of data (see the module doc)."""
        if not _is_image_set(data):
            yield from _raw_batches(data, self.batch_size)
            return
        inp = self._need_input(f"an l2ood image set ({getattr(data, 'name', '?')})")
        errors: list[str] = []
        # as l2ood's runs read them (l2ood.run.Run.image_batches): the set in the input format, read through the fit
        for x, y, err in data.formatted(inp.channels, inp.size).batches(self.batch_size, fit=inp.fit):
            errors += err
            yield convert_format(x, inp.channels, inp.size), y  # streamed views are decoded as RGB: the channels
        if errors:
            warnings.warn(f"{data.name}: {len(errors)} unreadable image(s) left out (first: {errors[0]})",
                          stacklevel=3)

    # ------------------------------------------------------------------------------------------------ passes
    def _pass(self, data: Any, columns: Iterable[Column] = ()) -> tuple[Extraction, dict[str, np.ndarray]]:
        """One pass over ``data``: its forward pass (features, logits, labels) and the scores (float64) of the
        ``columns`` that run the model themselves (ODIN, RankFeat), batch by batch."""
        model_cols = [c for c in columns if c.needs_model]
        feats, logits, labels = [], [], []
        by_model: dict[str, list[np.ndarray]] = {c.key: [] for c in model_cols}
        for x, y in self._batches(data):
            x = self._input(x)
            with torch.no_grad():
                out = self.net(x)
            feats.append(out.features.cpu())
            logits.append(out.logits.cpu())
            if y is not None:
                labels.append(torch.as_tensor(y).long().cpu())
            for c in model_cols:  # input gradients: outside no_grad
                by_model[c.key].append(c.score_images(self.net, self.rt, x))  # type: ignore[arg-type]
        if not feats:
            raise ConfigError("no images given")
        lab = torch.cat(labels) if labels and sum(len(t) for t in labels) == sum(len(f) for f in feats) else None
        return (Extraction(torch.cat(feats), torch.cat(logits), lab),
                {k: np.concatenate(v) for k, v in by_model.items()})

    def _scores(self, columns: Mapping[str, Column], data: Any) -> tuple[Extraction, dict[str, np.ndarray]]:
        """``(forward pass, {detector: float64 scores})`` of ``data`` with fitted ``columns`` (one pass)."""
        ext, by_model = self._pass(data, columns.values())
        head = self.head
        return ext, {name: by_model[c.key] if c.needs_model else c.score(ext, head) for name, c in columns.items()}

    def extract(self, data: Any) -> Extraction:
        """Features (the head's input), logits and labels of every image in ``data``."""
        return self._pass(data)[0]

    @staticmethod
    def _fit_columns(columns: Iterable[Column], ext: Extraction, head: Head) -> None:
        for c in columns:
            if c.needs_fit:
                c.fit(ext, head)

    def fit(self, data: Any) -> PostHoc:
        """Fit the detectors that need ID statistics on ``data`` (the model's ID training images: a tensor, an
        (images, labels) pair, a Dataset, a DataLoader or an l2ood image set)."""
        if any(c.needs_fit for c in self.columns.values()):
            ext = self.extract(data)
            self._fit_columns(self.columns.values(), ext, self.head)
            self.n_fit = len(ext)
        self.fitted = True
        return self

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise ConfigError("call fit(ID training data) first: " + ", ".join(
                n for n, c in self.columns.items() if c.needs_fit) + " need ID statistics")

    def score(self, images: Any) -> dict[str, Tensor]:
        """``{detector: (N,) scores}`` for ``images`` (a tensor, DataLoader, Dataset or l2ood image set; one
        pass); higher = ID."""
        self._check_fitted()
        return {k: torch.from_numpy(v).float() for k, v in self._scores(self.columns, images)[1].items()}

    def evaluate(self, id_images: Any, ood: Mapping[str, Any]) -> dict[str, dict[str, OODMetrics]]:
        """``{ood set: {detector: {auroc, fpr95, fpr95_ood_pos, aupr_in, aupr_out}}}`` (:mod:`l2ood.metrics.ood`)."""
        self._check_fitted()
        s_id = self._scores(self.columns, id_images)[1]
        res: dict[str, dict[str, OODMetrics]] = {}
        for name, data in ood.items():
            s = self._scores(self.columns, data)[1]
            res[name] = {d: ood_metrics(s_id[d], s[d]) for d in s_id}
        return res

    # ------------------------------------------------------------------------------------------------ bench
    def evaluate_benchmark(self, name: str, *, fit_data: Any = None, data_root: str | Path | None = None,
                           n_ood: int | None = None, n_id: int | None = None, n_fit: int | None = None,
                           log: Log = None) -> BenchmarkTable:
        """The near/far table of ``l2ood bench --benchmark NAME`` for this model.

        The benchmark's sets (:data:`l2ood.bench.BENCHMARKS`: ID test set, near- and far-OoD sets) are opened as
        ``l2ood bench`` opens them (:func:`l2ood.data.source.open_images` at the benchmark's channels and size,
        streamed where the definition says so; ``n_id``/``n_ood`` seeded subsets, seed 0) and brought to this
        model's input config. Detectors that need ID statistics are fitted on ``fit_data`` (any data :meth:`fit`
        takes) or, by default, on the benchmark's ID training split (``n_fit``: a seeded subset, as ``--n-fit``);
        they are fitted afresh for the table, this object's own fit is left as it is. Per set and detector the
        metrics are those of :func:`l2ood.metrics.ood_metrics` (AUROC; FPR@95 with ID positive, ``fpr95``, and
        with OoD positive, ``fpr95_ood_pos``); the group values are the unweighted means over the group's sets,
        as in ``l2ood bench`` (OpenOOD v1.5). Needs ``preprocessing``."""
        self._need_input("evaluate_benchmark")
        bdef, train_spec, id_spec, ood_specs = _benchmark_sets(name, data_root)
        ch, size = int(bdef["channels"]), (int(bdef["size"][0]), int(bdef["size"][1]))
        path = "prefer-stream" if bdef.get("stream") else "memory"  # streamed where the definition says so

        def opened(spec: str, split: str, n: int | None) -> ImageSource:
            return open_images(spec, split, root=data_root, n=n, seed=0, channels=ch, size=size, data_path=path)

        cols = self._new_columns(self.columns)
        if any(c.needs_fit for c in cols.values()):
            fit_set = fit_data if fit_data is not None else opened(train_spec, "train", n_fit)
            ext = self.extract(fit_set)
            if log:
                log(f"{name}: detectors fitted on {len(ext)} ID training images")
            self._fit_columns(cols.values(), ext, self.head)
        id_set = opened(id_spec, "test", n_id)
        id_ext, s_id = self._scores(cols, id_set)
        acc = (float((id_ext.logits.argmax(1) == id_ext.labels).float().mean())
               if id_ext.labels is not None and len(id_ext.labels) else None)
        per_set: dict[str, dict[str, OODMetrics]] = {}
        groups: dict[str, str] = {}
        n = {id_set.name: len(id_ext)}
        for spec, group in ood_specs:
            ds = opened(spec, "test", n_ood)
            _, s = self._scores(cols, ds)
            per_set[ds.name] = {d: ood_metrics(s_id[d], s[d]) for d in cols}
            groups[ds.name], n[ds.name] = group, len(s[next(iter(cols))])
            if log:
                log(f"{name}: {ds.name} ({group}, {n[ds.name]} images) scored")
        table = BenchmarkTable(name, list(cols), per_set, groups, id_accuracy=acc, n=n, id_name=id_set.name)
        table.means = {d: {g: {m: float(np.mean([per_set[s][d][m] for s in per_set if groups[s] == g]))  # type: ignore[literal-required]
                               for m in GROUP_METRICS} for g in table.group_names} for d in cols}
        return table

    # ------------------------------------------------------------------------------------------------ deploy
    def save(self, run_dir: str | Path, *, factory: str | None = None, factory_kwargs: dict[str, Any] | None = None,
             arch: str | None = None, width: int | None = None, class_names: list[str] | None = None,
             data: str | None = None, holdout: int = 0, test_data: str | None = None,
             data_root: str | Path | None = None, data_path: str = "memory", fitted: bool = True,
             overwrite: bool = False, log: Log = None) -> Run:
        """Write a run folder for this model through :func:`l2ood.importing.import_classifier` (as ``l2ood
        import`` does); returns the :class:`~l2ood.run.Run` (on this object's device, fp32).

        Exactly one of:

        * ``factory`` (``package.module:function``, importable, ``factory_kwargs`` its JSON keyword arguments):
          the function that builds this network; the network's current weights are saved and the named head
          recorded. The factory is called once first to check that it builds a network these weights fit and that
          computes the same logits (a run it could not rebuild is never written);
        * ``arch`` (``torchvision:NAME``, ``timm:NAME`` or an l2ood architecture of ``width``): the network's
          state dict is written to a temporary safetensors file and imported with ``arch=`` (the record names
          that temporary file, deleted afterwards, and its SHA-256).

        ``data`` (a data spec; ``holdout`` images kept apart for :meth:`calibrate`), ``test_data``, ``data_root``,
        ``data_path``, ``class_names`` and ``overwrite`` are those of ``import_classifier``; the input config is
        ``preprocessing``. With ``fitted`` (default) the detectors fitted by :meth:`fit` are saved with the run
        (``RUN/detectors/<key>.safetensors``, recorded in ``model.json``), so the run screens and calibrates with
        them without its training data (``l2ood calibrate --refit`` fits them on the run's data instead). After
        writing, the run's network is checked against this one on a probe batch (same logits and features)."""
        from .importing import import_classifier
        from .run import Run

        inp = self._need_input("save")
        if (factory is None) == (arch is None):
            raise ConfigError("give exactly one of factory (package.module:function that builds this network) and "
                              "arch (a torchvision/timm/l2ood architecture name)")
        common: dict[str, Any] = {
            "preprocessing": inp.preset, "channels": inp.channels, "image_size": inp.size, "fit": inp.fit,
            "mean": list(inp.mean), "std": list(inp.std), "class_names": class_names, "data": data, "holdout": holdout,
            "test_data": test_data, "data_root": data_root, "data_path": data_path, "overwrite": overwrite, "log": log}
        try:
            if factory is not None:
                if width is not None:
                    raise ConfigError("width goes with arch (an l2ood architecture), not with a factory")
                head = self.net.head_layer
                if not head:
                    raise ConfigError("the head layer is not a submodule of the model: give PostHoc the head's name")
                self._check_factory(factory, factory_kwargs, head, inp)
                import_classifier(run_dir, factory=factory, factory_kwargs=factory_kwargs, head=head,
                                  model=self.net.model, **common)
            else:
                assert arch is not None
                if factory_kwargs is not None:
                    raise ConfigError("factory_kwargs go with a factory; an architecture name takes none")
                from safetensors.torch import save_file

                if width is not None:
                    common["width"] = width
                tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.net.model.state_dict().items()}
                with tempfile.TemporaryDirectory(prefix="l2ood-posthoc-") as tmp:
                    weights = Path(tmp) / "weights.safetensors"
                    save_file(tensors, str(weights))
                    import_classifier(run_dir, arch=arch, weights=weights, **common)
        finally:
            self.net.to(self.rt.device).eval()  # the import checks the network on the CPU
        run_dir = Path(run_dir)
        self._saved.add(run_dir.resolve())
        run = Run.load(run_dir, device=str(self.rt.device), precision="fp32", data_root=data_root, trust_code=True)
        self._check_same(run, str(run_dir))
        if fitted and self.fitted and self.n_fit:
            self._record_fits(run)
        return run

    def _check_factory(self, factory: str, kwargs: dict[str, Any] | None, head: str, inp: InputConfig) -> None:
        """Build the factory's network, load this network's weights into it (strict) and compare the logits on a
        probe batch: the run must be rebuilt as this network."""
        from .models.adapters import load_backbone_weights
        from .models.imported import call_factory

        net = call_factory(factory, kwargs, trust_code=True, where=f"factory {factory}")
        what = f"factory {factory}{f' ({kwargs})' if kwargs else ''} builds another network"
        fix = "give the factory and keyword arguments that build this network"
        try:  # the loader `l2ood import` uses for a factory's weights: every tensor found, of the same shape
            extra = load_backbone_weights(net, dict(self.net.model.state_dict()), f"factory {factory}")
        except ConfigError as e:
            raise ConfigError(f"{what} ({e}); {fix}") from None
        if extra:
            raise ConfigError(f"{what}: {len(extra)} of this model's tensors it lacks (e.g. {extra[:3]}); {fix}")
        rebuilt = HookedClassifier(net.to(self.rt.device), head, mean=inp.mean, std=inp.std).eval()
        self._compare(rebuilt, f"factory {factory}")

    def _compare(self, other: nn.Module, where: str) -> None:
        """Refuse (:class:`ConfigError`) a network whose logits or features differ from this one's on a probe batch."""
        inp = self.preprocessing
        assert inp is not None
        x = torch.rand(4, inp.channels, *inp.size, generator=torch.Generator().manual_seed(0))
        dev = next((p.device for p in other.parameters()), self.rt.device)
        with torch.no_grad():
            a, b = self.net(x.to(self.rt.device)), other(x.to(dev))
        for what, u, v in (("logits", a.logits, b.logits), ("features", a.features, b.features)):
            u, v = u.float().cpu(), v.float().cpu()
            if u.shape != v.shape or not torch.allclose(u, v, rtol=1e-3, atol=1e-4 * (1 + float(u.abs().max()))):
                raise ConfigError(f"{where}: the network it gives computes other {what} than this model with the same "
                                  "weights and input config (another architecture, or a forward pass that differs)")

    def _check_same(self, run: Run, where: str) -> None:
        try:
            self._compare(run.model, where)
        except ConfigError as e:
            raise ConfigError(f"{e}; the run folder {where} does not reproduce this model: delete it") from None

    def _record_fits(self, run: Run) -> None:
        """Save the detectors fitted by :meth:`fit` with ``run`` (:mod:`l2ood.detectors.store`) and record them
        (:class:`l2ood.record.FittedDetectorRecord`), as ``l2ood calibrate`` saves the fits it makes."""
        from .detectors.store import save_fitted
        from .record import FittedDetectorRecord, add_fitted_detector
        from .runfolder import fitted_file, run_lock

        assert run.path is not None
        desc = f"PostHoc.fit ({self.n_fit} images)"
        with run_lock(run.path, "PostHoc.save (fitted detectors)", shared=True):
            for c in self.columns.values():
                if not c.needs_fit:
                    continue
                file = fitted_file(c.key)
                sha = save_fitted(c.detector, run.path / file, variant=c.variant,
                                  weights_sha256=run.record.weights_sha256, n_fit=self.n_fit, fit_data=desc)
                entry = FittedDetectorRecord(file=file, sha256=sha, detector=c.name,
                                             variant=c.variant,  # type: ignore[arg-type]
                                             hyper_parameters=c.hyper_parameters(),
                                             weights_sha256=run.record.weights_sha256, n_fit=self.n_fit, fit_data=desc)
                run.record = add_fitted_detector(run.path, c.key, entry)

    def calibrate(self, run: Run | str | Path, detector: str = "feature_norm", *, tpr: float = 0.95,
                  alpha: float | None = None, calibration_data: str | None = None, name: str = "default",
                  data_root: str | Path | None = None, combine: str = "bonferroni", refit: bool = False,
                  batch_size: int = 512, precision: str = "fp32", trust_code: bool | None = None) -> Calibration:
        """Store a screening calibration in ``run`` (a run folder, e.g. written by :meth:`save`, or its
        :class:`~l2ood.run.Run`) exactly as ``l2ood calibrate`` does: :func:`l2ood.screen.calibrate_run` with the
        same arguments (``detector`` one key or several comma-separated ones, combined by ``combine``; the run's
        held-out ID images or ``calibration_data``, a data spec; the threshold keeps ``tpr`` of them, or conformal
        p-values with ``alpha``). A folder is loaded on this object's device at ``precision`` (the command line's
        default is ``auto``: pass ``--precision fp32`` there for the same numbers); a run built by a factory is
        loaded when this object wrote it, else only with ``trust_code`` (or ``L2OOD_TRUST_CODE=1``)."""
        from .run import Run
        from .screen import calibrate_run

        if not isinstance(run, Run):
            path = Path(run)
            trust = trust_code if trust_code is not None else (True if path.resolve() in self._saved else None)
            run = Run.load(path, device=str(self.rt.device), precision=precision, data_root=data_root,
                           trust_code=trust)
        return calibrate_run(run, tpr=tpr, alpha=alpha, detector=detector, calibration_data=calibration_data,
                             name=name, data_root=data_root, batch_size=batch_size, combine=combine, refit=refit)


__all__ = ["GROUP_METRICS", "BenchmarkTable", "PostHoc"]
