"""A trained run as one object: its record, its data, its model and one cached forward pass.

::

    run = Run.load("runs/fm-l2")               # validates model.json, checks the weights' digest
    train = run.train_split()                   # the exact training images (fingerprint checked)
    hold = run.holdout()                        # held-out ID images (or None)
    test, where = run.id_test()                 # ID test images, never training images
    ext = run.forward(test)                     # features z, logits, labels (cached on disk)
    model = run.model                           # the Classifier, on the run's device, eval mode

Evaluation, calibration, screening, tracking and the bench all score images through
:meth:`Run.forward` / :meth:`Run.forward_batch` (the latter is :func:`l2ood.detectors.forward_batch`
on the run's runtime), and all bring images to the model's input through :attr:`Run.preprocessing`
(:mod:`l2ood.data.preprocess`).

Under ``torchrun`` (:mod:`l2ood.distributed`) each rank computes on its own device (``cuda:LOCAL_RANK``, or the
CPU) and :meth:`Run.forward` extracts only this rank's contiguous, batch-aligned shard of a data set, then
gathers the shards in rank order, so every rank holds exactly the single-process extraction; rank 0 alone
writes the cache.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import DataError, load_source
from .data.preprocess import Preprocessing
from .data.source import ImageSource
from .detectors import Extraction, Head, forward_batch
from .distributed import DistInfo, agree, batch_shard, dist_from_env, ensure_group, on_main, rank_device
from .errors import ConfigError, RunError
from .metrics.conformal import Calibration
from .models import Classifier, ModelConfig
from .models.config import TrainConfig
from .record import DataRecord, RunRecord, new_record, read_record
from .runfolder import CACHE_DIR, META, WEIGHTS
from .runtime import Runtime, resolve_runtime
from .train.artifact import load_weights, refuse_pickle

Images = ImageSource  # in memory, or an index read batch by batch (:mod:`l2ood.data.source`)


class Run:
    """A run folder (or an in-memory model) with its validated :class:`~l2ood.record.RunRecord`.

    Args:
        record: the run record.
        path: the run folder (``None`` for :meth:`from_model`); extractions are cached in ``path/cache``.
        model: an already-built model (else loaded lazily from ``path``).
        device: where every forward pass runs (see :mod:`l2ood.runtime`).
        precision: the autocast precision of every forward pass.
        data_root: overrides the data root recorded at training for re-loading the run's data.
    """

    def __init__(self, record: RunRecord, path: str | Path | None = None, *, model: Classifier | None = None,
                 device: str = "auto", precision: str = "auto", data_root: str | Path | None = None,
                 trust_code: bool | None = None) -> None:
        self.record = record
        self._trust_code = trust_code
        self.path = Path(path) if path is not None else None
        self._model = model
        self._device, self._precision = device, precision
        self.data_root = data_root
        self._train: Images | None = None  # loaded (or adopted) once
        self._holdout: Images | None = None

    # -------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", precision: str = "auto",
             data_root: str | Path | None = None, verify_weights: bool = True, trust_code: bool | None = None) -> Run:
        """Load a run folder (or its ``model.safetensors``); pickle files are refused.

        A run imported from code (``l2ood import --factory``) is loaded only when ``trust_code`` is true (``None``:
        the environment variable ``L2OOD_TRUST_CODE=1``), since rebuilding its network runs that code."""
        path = Path(path)
        refuse_pickle(path)
        run_dir = path.parent if path.is_file() else path
        if not run_dir.exists():
            raise RunError(f"{run_dir}: no such run folder")
        if not (run_dir / WEIGHTS).is_file() or not (run_dir / META).is_file():
            raise RunError(f"{run_dir}: not a trained l2ood run (need {WEIGHTS} and {META}; train one with "
                           "`l2ood train`)")
        record = read_record(run_dir)
        if verify_weights and record.upgraded_from is None:
            from .record import file_sha256

            if file_sha256(run_dir / WEIGHTS) != record.weights_sha256:
                raise RunError(f"{run_dir / WEIGHTS}: the weights differ from those recorded in {META} "
                               "(replaced after training, or a write was interrupted); retrain or restore them")
        _check_code(record, run_dir, trust_code)
        return cls(record, run_dir, device=device, precision=precision, data_root=data_root, trust_code=trust_code)

    @classmethod
    def from_model(cls, model: Classifier, config: ModelConfig, *, device: str = "auto",
                   precision: str = "auto", fit: str = "resize") -> Run:
        """Wrap an in-memory model (no data spec: pass data explicitly to evaluate or calibrate it).

        Mean/std and the class count are taken from the model itself; ``fit`` is how files are brought to
        its input size (:mod:`l2ood.data.preprocess`)."""
        from dataclasses import replace

        config = replace(config, mean=model.input_mean.flatten().tolist(),
                         std=model.input_std.flatten().tolist(),
                         num_classes=int(model.fc.out_features), head=model.head)
        if len(config.mean) == 1 and config.in_channels == 3:
            config = replace(config, mean=config.mean * 3, std=config.std * 3)
        config.validate()
        rec = new_record(config, TrainConfig(), DataRecord(train=None, n_train=0),
                         weights_sha256="0" * 64, history=[], runtime="in memory", fit=fit)
        return cls(rec, None, model=model, device=device, precision=precision)

    @classmethod
    def from_pretrained(cls, arch: str, weights: str | Path, *, width: int = 64,
                        image_size: tuple[int, int] = (224, 224),
                        mean: list[float] | None = None, std: list[float] | None = None, fit: str = "imagenet",
                        device: str = "auto", precision: str = "auto") -> Run:
        """A pretrained classifier, head included, from a weights file (safetensors, or a torch checkpoint read
        with ``weights_only=True``) for post-hoc evaluation without training — e.g. torchvision's ImageNet
        ResNet50: ``Run.from_pretrained("torchvision:resnet50", "resnet50.safetensors")``.

        The head is the one ``(C, D)`` weight (+ ``(C,)`` bias) the backbone does not use, with ``D`` the
        backbone's feature size; inputs are normalized with ``mean``/``std`` (default ImageNet's) and
        files are read at ``image_size`` through ``fit`` (default: shorter side 256/224, centre crop).
        ``width`` applies to l2ood's own architectures only."""
        from .data.stream import IMAGENET_MEAN, IMAGENET_STD
        from .models.adapters import read_weights_file
        from .models.pretrained import classifier_from_tensors

        cfg = ModelConfig(arch=arch, width=width, head="ce", num_classes=2, image_size=image_size,
                          mean=list(mean or IMAGENET_MEAN), std=list(std or IMAGENET_STD))
        try:
            model, cfg, _ = classifier_from_tensors(cfg, read_weights_file(weights), f"{weights}")
        except ConfigError as e:
            raise RunError(str(e)) from None
        return cls.from_model(model.eval(), cfg, device=device, precision=precision, fit=fit)

    # -------------------------------------------------------------------------------------------- model
    @cached_property
    def runtime(self) -> Runtime:
        """Device and precision of every forward pass, with the native-crash guard for this model
        (:meth:`l2ood.runtime.Runtime.for_model`: ODIN and RankFeat run backward passes)."""
        rt = resolve_runtime(self._device, self._precision)
        device = rank_device(rt.device)  # under torchrun: cuda:LOCAL_RANK, one GPU per rank
        ensure_group(device.type)  # under torchrun: nccl on CUDA, gloo on the CPU
        if device != rt.device:
            rt = replace(rt, device=device)
        return rt.for_model(self._weights) if rt.channels_last else rt

    @property
    def dist(self) -> DistInfo:
        """This process's rank layout (one rank unless started by ``torchrun``; the group is set up with
        :attr:`runtime`)."""
        _ = self.runtime
        return dist_from_env()

    @property
    def config(self) -> ModelConfig:
        return self.record.model

    @property
    def preprocessing(self) -> Preprocessing:
        """How files and arrays become this model's input (:mod:`l2ood.data.preprocess`)."""
        return self.record.preprocessing.preprocessing()

    @cached_property
    def model(self) -> Classifier:
        """The classifier on :attr:`runtime`'s device, in eval mode."""
        return self.runtime.prepare(self._weights).eval()

    @cached_property
    def _weights(self) -> Classifier:
        """The classifier as given or loaded, before :attr:`runtime` places it."""
        m = self._model
        if m is None:
            if self.path is None:
                raise RunError("an in-memory run has no weights file")
            m = load_weights(self.path, self.config, trust_code=self._trust_code)
        return m

    @property
    def head(self) -> Head:
        return Head.of(self.model)

    @property
    def head_mode(self) -> str:
        return self.config.head

    def calibration(self, name: str = "default") -> Calibration | None:
        """A stored calibration by name (``None`` when the run has none of that name)."""
        return self.record.calibrations.get(name)

    # -------------------------------------------------------------------------------------------- data
    @property
    def data(self) -> DataRecord:
        return self.record.data

    def _where(self) -> str:
        return str(self.path / META) if self.path else "in-memory run"

    def _load(self, which: str) -> Images:
        src = getattr(self.data, which)
        if src is None:
            raise DataError(f"{self._where()}: no {which} data recorded (the run was trained on images built in "
                            "memory, or by l2ood 0.1.0 from data it could not name); pass the data explicitly")
        h, w = self.config.image_size
        return load_source(src.source(), root=self.data_root, size=(h, w))

    def _formatted(self, ds: Images) -> Images:
        h, w = self.config.image_size
        return ds.formatted(int(self.config.in_channels), (int(h), int(w)))

    def _checked_train(self, train: Images) -> Images:
        """``train`` in the model's format, after checking it is the set the run was trained on."""
        train = self._formatted(train)
        spec = self.data.train.describe() if self.data.train else "?"
        if len(train) != self.data.n_train:
            raise DataError(f"{self._where()}: the run was trained on {self.data.n_train} images, but its data "
                            f"spec ({spec}) gives {len(train)} now: the data changed since training")
        if self.data.fingerprint is not None:
            if train.fingerprint() != self.data.fingerprint:
                what = "index (paths, sizes, labels)" if train.streamed else "pixel"
                raise DataError(f"{self._where()}: the images of {spec} differ from those the run was trained on "
                                f"({what} fingerprint mismatch): the data changed since training")
        return train

    def adopt(self, train: Images, holdout: Images | None = None) -> None:
        """Use images already in memory as the run's training split (checked like :meth:`train_split`) and
        holdout, so they are not loaded again."""
        self._train = self._checked_train(train)
        if holdout is not None and self.data.holdout is not None:
            self._holdout = self._formatted(holdout)

    def train_split(self) -> Images:
        """The exact images the run was trained on (count and pixel fingerprint checked)."""
        if self._train is None:
            self._train = self._checked_train(self._load("train"))
        return self._train

    def holdout(self) -> Images | None:
        """The held-out ID images of the training data (``None`` when the run kept none)."""
        if self.data.holdout is None:
            return None
        if self._holdout is None:
            self._holdout = self._formatted(self._load("holdout"))
        return self._holdout

    def id_test(self) -> tuple[Images, str]:
        """``(ID test images, where they come from)`` — never images the run was trained on."""
        if self.data.test is None:
            raise DataError(f"{self._where()}: no ID test data recorded: the data set has no test split and the run "
                            "kept no holdout; retrain with --holdout N or --test-data SPEC, or pass test data")
        if self.data.test_origin == "holdout":
            hold = self.holdout()
            assert hold is not None
            return hold, self.record.test_description
        return self._formatted(self._load("test")), self.record.test_description

    def to_input_format(self, ds: Images) -> Images:
        """Any image set → this model's channels and size (:meth:`l2ood.data.source.ImageSource.formatted`)."""
        return self._formatted(ds)

    # -------------------------------------------------------------------------------------------- forward
    def forward_batch(self, images: Tensor) -> Extraction:
        """One batch of uint8 images in the model's format → features, logits (fp32, CPU)."""
        feats, logits = forward_batch(self.model, images, self.runtime)
        return Extraction(feats, logits)

    def image_batches(self, ds: Images, batch_size: int = 256) -> Iterator[Tensor]:
        """uint8 batches of ``ds`` in the model's format (streamed sets: read and decoded in workers;
        unreadable images are left out)."""
        for x, _, _ in self._formatted(ds).batches(batch_size, fit=self.preprocessing.fit):
            yield x

    def _extract(self, ds: Images, batch_size: int, progress: bool, desc: str | None) -> Extraction:
        """One forward pass over ``ds`` (in the model's format) in eval mode; unreadable images are left out."""
        self.model.eval()
        feats, logits, labels, errors = [], [], [], []
        for x, y, err in ds.batches(batch_size, fit=self.preprocessing.fit, progress=progress, desc=desc):
            errors += err
            f, lg = forward_batch(self.model, x, self.runtime)
            feats.append(f)
            logits.append(lg)
            if y is not None:
                labels.append(y)
        if errors:
            warnings.warn(f"{ds.name}: {len(errors)} unreadable image(s) left out (first: {errors[0]})", stacklevel=3)
        m = self.model
        return Extraction(torch.cat(feats) if feats else torch.empty(0, m.fc.in_features),
                          torch.cat(logits) if logits else torch.empty(0, m.fc.out_features),
                          torch.cat(labels) if ds.labels is not None and labels else
                          (torch.empty(0, dtype=torch.long) if ds.labels is not None else None))

    def forward(self, ds: Images, *, batch_size: int = 512, progress: bool = False, desc: str | None = None,
                cache: bool = True, gather: bool = True) -> Extraction:
        """Features, logits and labels of every image in ``ds`` (converted to the model's format first).

        With a run folder and ``cache=True`` the result is stored as safetensors in ``RUN/cache/``, keyed
        by the weights' digest, the images' SHA-1 and the runtime precision, so a second call (another
        detector, another command) costs no forward pass.

        Under ``torchrun`` (a collective call: every rank makes it, with the same arguments) each rank reads only
        its rows (:meth:`local_rows`) and the shards are gathered in rank order (:meth:`gather`): every rank
        gets the single-process extraction, and rank 0 alone writes the cache. ``gather=False`` keeps this rank's
        shard (``sharded=True``; in one process: everything) — for fits that reduce per-rank statistics."""
        ds = self._formatted(ds)
        bs = min(batch_size, 256) if ds.streamed else batch_size
        info = self.dist
        path = self._cache_path(ds) if cache else None
        if not info.active:
            if path is not None and path.is_file():
                try:
                    ext = Extraction.load(path)
                    if len(ext) == len(ds):
                        return ext
                except Exception:  # a damaged cache file is recomputed
                    path.unlink(missing_ok=True)
            ext = self._extract(ds, bs, progress, desc)
            self._write_cache(path, ext)
            return ext
        start, stop = batch_shard(len(ds), bs, info)
        if path is not None:
            got = self._read_cache_shared(path, len(ds), None if gather else (start, stop))
            if got is not None:
                return got
        part = self._extract(self._rows(ds, start, stop), bs, progress and info.is_main, desc)
        part.sharded = True
        return self._gathered(part, path) if gather else part

    def gather(self, part: Extraction, ds: Images, *, cache: bool = True) -> Extraction:
        """The whole extraction of ``ds`` from every rank's shard ``part`` (:meth:`forward` with
        ``gather=False``), in rank order, on every rank (collective), written to the cache by rank 0."""
        if not part.sharded:
            return part
        return self._gathered(part, self._cache_path(self._formatted(ds)) if cache else None)

    def _gathered(self, part: Extraction, path: Path | None) -> Extraction:
        ext = part.gather()
        if path is not None:
            on_main(lambda: self._write_cache(path, ext))
        return ext

    def local_rows(self, ds: Images, batch_size: int) -> Images:
        """This rank's contiguous rows of ``ds`` in the model's format, whole batches of ``batch_size`` of the
        single-process batching (:func:`l2ood.distributed.batch_shard`); all of ``ds`` in one process."""
        ds = self._formatted(ds)
        info = self.dist
        if not info.active:
            return ds
        return self._rows(ds, *batch_shard(len(ds), batch_size, info))

    @staticmethod
    def _rows(ds: Images, start: int, stop: int) -> Images:
        """Images ``start … stop−1`` of ``ds``, in order, read exactly as ``ds`` reads them (same view)."""
        if start == 0 and stop == len(ds):
            return ds
        d: Any = ds  # both sources are dataclasses; a streamed one selects rows of its index, one in memory pixels
        if ds.streamed:
            return d.take(np.arange(start, stop))
        return replace(d, images=d.images[start:stop],
                       labels=None if d.labels is None else d.labels[start:stop])

    def _cache_path(self, ds: Images) -> Path | None:
        """Where the forward pass of ``ds`` (in the model's format) is cached (``None`` without a run folder)."""
        if self.path is None:
            return None
        key = (f"{ds.name.replace('/', '_')[:40]}-{len(ds)}-{self.record.weights_sha256[:16]}-"
               f"{ds.cache_key(self.preprocessing.fit)}-{self.runtime.precision}")
        return self.path / CACHE_DIR / f"{key}.safetensors"

    def _write_cache(self, path: Path | None, ext: Extraction) -> None:
        if path is None:
            return
        try:  # the cache is an optimisation: a read-only or full disk only costs the next pass
            path.parent.mkdir(parents=True, exist_ok=True)
            ext.save(path)
        except OSError as e:
            warnings.warn(f"could not cache features in {path.parent} ({e.strerror or e})", stacklevel=3)

    @staticmethod
    def _read_cache_shared(path: Path, n: int, rows: tuple[int, int] | None) -> Extraction | None:
        """The cached extraction at ``path`` when every rank can read it (all of it, or ``rows`` only, then marked
        ``sharded``), else ``None`` on every rank (collective: the ranks agree before and after reading)."""
        if not agree(Extraction.saved_rows(path) == n):
            return None
        try:
            ext: Extraction | None = Extraction.load(path, rows)
        except Exception:  # damaged: every rank recomputes, rank 0 removes it
            ext = None
        if not agree(ext is not None):
            on_main(lambda: path.unlink(missing_ok=True))
            return None
        assert ext is not None
        ext.sharded = rows is not None
        return ext

    def scores(self, ds: Images, detector: str = "feature_norm", **kw: Any) -> np.ndarray:
        """Scores of a post-hoc detector that needs no fitting (default ‖z‖) for every image of ``ds``."""
        from .detectors import make_detector

        det = make_detector(detector)
        if det.needs_fit or det.needs_model:
            raise RunError(f"detector '{detector}' needs fitting or the model in the loop; use l2ood.evaluation")
        return det.score(self.forward(ds, **kw), self.head).float().numpy().astype(np.float64)

    def __repr__(self) -> str:
        m = self.config
        return f"Run({self.path or 'in memory'}: {m.arch} w{m.width} {m.head}, {m.num_classes} classes)"


def _check_code(record: RunRecord, run_dir: Path, trust_code: bool | None) -> None:
    """Refuse a run built by code the caller has not said it trusts; warn when that code changed since import."""
    from .models.imported import FACTORY_PREFIX, TRUST_ENV, factory_sha256, trusted

    arch = record.model.arch
    if not arch.startswith(FACTORY_PREFIX):
        return
    code = arch[len(FACTORY_PREFIX):]
    if not trusted(trust_code):
        raise RunError(f"{run_dir}: this run's network is built by code ({code}, imported with `l2ood import`); "
                       "loading it runs that code. Do so only if you trust it: pass --trust-code (Python: "
                       f"trust_code=True), or set {TRUST_ENV}=1")
    was = record.imported.factory_sha256 if record.imported else None
    now = factory_sha256(arch)
    if was is not None and now != was:
        warnings.warn(f"{run_dir}: the source of {code} changed since the run was imported (SHA-256 "
                      f"{was[:12]}… then, {(now or 'none')[:12]}… now); its weights still have to fit", stacklevel=3)


def run_of(obj: Run | str | Path, **kw: Any) -> Run:
    """A :class:`Run` from a run or a path."""
    return obj if isinstance(obj, Run) else Run.load(obj, **kw)


__all__ = ["Run", "run_of"]
