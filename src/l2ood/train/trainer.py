"""Training loop: SGD (Nesterov, momentum 0.9, weight decay 5e-4), cosine or one-cycle schedule.

Data stay in memory as uint8 tensors on the training device; each step converts one batch to
float, augments it (per-sample random crop + flip, :func:`l2ood.data.augment_batch`) and runs the
model under the resolved autocast (bf16 + channels_last on CPUs that support it).

Determinism: model init uses ``torch.manual_seed(seed)``; the shuffle of epoch ``e`` is drawn from a
generator seeded with ``(seed, e)``, the augmentation of step ``s`` of epoch ``e`` from one seeded
with ``(seed, e, s)``. Training state is therefore fully described by (weights, optimizer buffers,
epoch, step), which is exactly what a checkpoint stores; ``resume`` restarts from it.
"""

from __future__ import annotations

import faulthandler
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import jsonio
from .. import record as run_record
from ..data import ImageSet, augment_batch, channel_stats
from ..data.source import ImageSource
from ..data.stream import (
    IGNORE_LABEL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    StreamingSet,
    epoch_seed,
    loader,
    sample_stats,
)
from ..errors import ConfigError, L2oodError
from ..models import Classifier, ModelConfig, build_model
from ..models.config import TrainConfig
from ..progress import progress as progress_bar
from ..runfolder import (
    CHECKPOINT,
    META,
    TRACK_LOG,
    TRAIN_LOG,
    WEIGHTS,
    check_target,
    clean_temp,
    remove_owned,
    run_lock,
)
from ..runtime import Runtime, resolve_runtime
from .artifact import save_weights
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import (
    all_reduce_min,
    all_reduce_sum,
    convert_sync_bn,
    dist_from_env,
    init_distributed,
    scaled_loss,
    shard,
)


class TrainingDiverged(L2oodError, RuntimeError):
    """Raised when the loss becomes NaN/inf; the last good checkpoint is kept."""


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate at global ``step`` (0-based) of ``total_steps``.

    cosine: linear warm-up over ``warmup_epochs``, then ``lr·½(1+cos(π·t))``, t ∈ [0, 1];
    onecycle: linear ramp from lr/10 to lr over the first 25 % of steps (or ``warmup_epochs``),
    then linear decay to 0.
    """
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        warm = warm or max(1, int(0.25 * total_steps))
        if step < warm:
            return cfg.lr * (0.1 + 0.9 * step / warm)
        return cfg.lr * max(0.0, (total_steps - step) / max(1, total_steps - warm))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total_steps - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))


def _seed(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p + 0x632BE59BD9B4E019 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of ``epoch`` (a pure function of seed and epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, epoch)))


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The augmentation RNG of one step (a pure function of seed, epoch and step)."""
    return torch.Generator().manual_seed(_seed(seed, epoch, step, 1))


Batch = tuple[int, torch.Tensor, torch.Tensor, int]  # (step, float input on the device, labels, global batch size)


class _MemoryFeeder:
    """Batches of an in-memory :class:`ImageSet`: uint8 on the device, per-batch crop + flip in torch."""

    def __init__(self, ds: ImageSet, cfg: TrainConfig, info: Any, rt: Runtime, hflip: bool) -> None:
        if ds.labels is None:
            raise ConfigError(f"{ds.name}: training needs labels")
        self.images, self.labels = ds.images.to(rt.device), ds.labels.to(rt.device)
        self.cfg, self.info, self.rt, self.hflip = cfg, info, rt, hflip
        self.steps_per_epoch = math.ceil(len(ds) / cfg.batch_size)

    def epoch(self, epoch: int, first: int) -> Iterator[Batch]:
        cfg, info = self.cfg, self.info
        perm = epoch_permutation(len(self.images), cfg.seed, epoch).to(self.rt.device)
        for step in range(first, self.steps_per_epoch):
            gidx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            start, length = shard(len(gidx), info)
            idx = gidx[start : start + length]
            x = self.images[idx].float().div_(255.0)
            x = self.rt.layout(augment_batch(x, cfg.pad, self.hflip, step_generator(cfg.seed, epoch, step),
                                             rows=(start, len(gidx))))
            yield step, x, self.labels[idx], len(gidx)

    def report(self, epoch: int) -> None:
        """Nothing to report: in-memory images were decoded (and checked) when loaded."""


class _StreamFeeder:
    """Batches of a :class:`~l2ood.data.stream.StreamingSet`, decoded and augmented (random resized crop +
    flip) in DataLoader workers. Step ``s`` of epoch ``e`` is a pure function of ``(seed, e, s)``.

    Tar shards under ``torchrun``: rank r owns shards ``r::world`` and draws its own permutation of
    their images from ``(seed, rank, e)``; ``batch_size / world`` images per rank and step, steps per
    epoch = the fewest any rank can fill (the last partial batch is dropped). Other sources: every
    rank draws the global permutation and reads its contiguous slice of each global batch."""

    def __init__(self, ds: StreamingSet, cfg: TrainConfig, info: Any, rt: Runtime, hflip: bool) -> None:
        if ds.labels is None:
            raise ConfigError(f"{ds.name}: training needs labels")
        self.ds, self.cfg, self.info, self.rt, self.hflip = ds, cfg, info, rt, hflip
        self.sharded = ds.is_tar and info.active
        self.errors: list[str] = []
        self.n_errors = 0
        if self.sharded:
            if cfg.batch_size % info.world:
                raise ConfigError(f"--batch-size {cfg.batch_size} must be a multiple of the {info.world} ranks "
                                  "when each rank reads its own tar shards")
            self.own = ds.owned_by(info.rank, info.world)
            self.local = cfg.batch_size // info.world
            steps = len(self.own) // self.local
            self.steps_per_epoch = int(all_reduce_min(torch.tensor([steps], dtype=torch.int64))[0])
            if self.steps_per_epoch < 1:
                raise ConfigError(f"{ds.name}: a rank's shards hold fewer than {self.local} images (one batch)")
        else:
            self.steps_per_epoch = math.ceil(len(ds) / cfg.batch_size)

    def _batches(self, epoch: int, first: int) -> tuple[list[list[tuple[int, int]]], list[int]]:
        cfg, info = self.cfg, self.info
        es = epoch_seed(cfg.seed, epoch)
        out, sizes = [], []
        if self.sharded:
            perm = self.own[epoch_permutation(len(self.own), _seed(cfg.seed, info.rank), epoch).numpy()]
            for step in range(first, self.steps_per_epoch):
                out.append([(int(i), es) for i in perm[step * self.local : (step + 1) * self.local]])
                sizes.append(cfg.batch_size)
            return out, sizes
        perm_t = epoch_permutation(len(self.ds), cfg.seed, epoch)
        for step in range(first, self.steps_per_epoch):
            gidx = perm_t[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            start, length = shard(len(gidx), info)
            out.append([(int(i), es) for i in gidx[start : start + length]])
            sizes.append(len(gidx))
        return out, sizes

    def epoch(self, epoch: int, first: int) -> Iterator[Batch]:
        batches, sizes = self._batches(epoch, first)
        if not batches:
            return
        self.errors, self.n_errors = [], 0
        it = loader(self.ds, batches, workers=self.cfg.workers, hflip=self.hflip,
                    pin_memory=self.rt.device.type == "cuda")
        for k, (x, y, errs) in enumerate(it):
            if errs:
                self.n_errors += len(errs)
                self.errors = self.errors or errs[:1]
            x = self.rt.layout(x.to(self.rt.device, non_blocking=True).float().div_(255.0))
            yield first + k, x, y.to(self.rt.device, non_blocking=True), sizes[k]

    def report(self, epoch: int) -> None:
        if self.n_errors:
            warnings.warn(f"{self.ds.name}: {self.n_errors} unreadable image(s) left out of epoch {epoch + 1} "
                          f"(first: {self.errors[0] if self.errors else '?'})", stacklevel=2)


def make_optimizer(model: Classifier, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)


@dataclass
class TrainResult:
    """What :func:`train` returns: the model, the per-epoch history, the run folder, and the configurations as
    trained and recorded (copies of the caller's, completed from the data; the caller's are never changed)."""

    model: Classifier
    history: list[dict[str, float]]
    run_dir: Path
    model_cfg: ModelConfig
    train_cfg: TrainConfig


def _finite_params(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def train(
    train_set: ImageSource,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    stop_after_steps: int | None = None,
    on_epoch_end: Callable[[int, Classifier], dict[str, Any] | None] | None = None,
    test_data: str | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train a classifier on ``train_set``; writes checkpoints and the final artifact to ``run_dir``.

    Neither ``model_cfg`` nor ``cfg`` is changed: the run uses (and records, and returns in
    :class:`TrainResult`) a copy of ``model_cfg`` whose input channels, image size, classes and class names come
    from the training images, and whose mean/std too when left at their defaults.
    ``stop_after_steps`` ends the run early after that many global steps (for tests).
    ``on_epoch_end(epoch, model)`` runs on rank 0 after each epoch (model in eval mode); a returned
    dict is appended to ``RUN/track.jsonl``. ``test_data``: a data-set spec of ID test images (else the
    training set's own test split, else its holdout; see :func:`l2ood.record.resolve_test`).

    At the end the weights go to ``RUN/model.safetensors`` and the run record to ``RUN/model.json``
    (:mod:`l2ood.record`): configs, the data spec of ``train_set.source`` (so the run can be evaluated
    and calibrated later however it was started), preprocessing and provenance. Re-running a finished
    run keeps its calibrations when the weights are unchanged.
    Under ``torchrun`` (``WORLD_SIZE > 1``) the run is data-parallel (:mod:`l2ood.train.distributed`).

    The run folder is protected (:mod:`l2ood.runfolder`): a folder holding another run is refused
    unless ``resume`` (continue it) or ``overwrite`` (delete the files l2ood wrote there, nothing else); a
    folder holding files l2ood did not write is refused unless ``overwrite``; the writer lock is held
    for the whole training, so a second training into the same folder stops with a message naming
    the first.

    A native crash (a fault inside a compiled kernel: SIGSEGV, or SIGABRT from a heap check) cannot be caught:
    Python's fault handler prints where it happened, and the checkpoint taken every
    ``cfg.checkpoint_every_steps`` steps (default 500) bounds what is lost; ``resume`` continues from it.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    if not faulthandler.is_enabled():
        faulthandler.enable()  # a native crash prints the Python stack it happened in (stderr)
    if not dist_from_env().is_main:
        return _train(train_set, model_cfg, cfg, run_dir, resume=resume, progress=progress, log=log,
                      stop_after_steps=stop_after_steps, on_epoch_end=on_epoch_end, test_data=test_data)
    with run_lock(run_dir, f"l2ood train ({model_cfg.arch}, head {model_cfg.head})"):
        _prepare_folder(run_dir, resume, overwrite, log)
        return _train(train_set, model_cfg, cfg, run_dir, resume=resume, progress=progress, log=log,
                      stop_after_steps=stop_after_steps, on_epoch_end=on_epoch_end, test_data=test_data)


def _prepare_folder(run_dir: Path, resume: bool, overwrite: bool, log: Callable[[str], None] | None) -> None:
    check_target(run_dir, resume, overwrite)
    if overwrite:
        removed = remove_owned(run_dir)
        if removed and log:
            log(f"--overwrite: removed {', '.join(removed)} from {run_dir}")
    clean_temp(run_dir)  # leftovers of a write interrupted by a kill (ours only: .l2ood-tmp-*)
    if not (run_dir / CHECKPOINT).is_file():  # a fresh start: logs of an attempt that never checkpointed go
        for name in (TRAIN_LOG, TRACK_LOG):
            (run_dir / name).unlink(missing_ok=True)


def _train(
    train_set: ImageSource,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    progress: bool,
    log: Callable[[str], None] | None,
    stop_after_steps: int | None,
    on_epoch_end: Callable[[int, Classifier], dict[str, Any] | None] | None,
    test_data: str | None,
) -> TrainResult:
    rt: Runtime = resolve_runtime(cfg.device, cfg.precision)
    info, created_pg = init_distributed(rt.device.type)
    if info.active and rt.device.type == "cuda":
        rt = Runtime(torch.device("cuda", info.local_rank), rt.amp_dtype, rt.channels_last)
    main_rank = info.is_main
    if not main_rank:
        log, progress = None, False
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
    streamed = train_set.streamed
    model_cfg = _filled_model_config(model_cfg, cfg, train_set)  # copies: the caller's configs stay as they are
    cfg = replace(cfg, extra=dict(cfg.extra))

    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    if cfg.pretrained:
        digest = load_pretrained(model, cfg.pretrained)
        cfg.extra = {**cfg.extra, "pretrained_sha256": digest}
        if log and not (resume and (run_dir / CHECKPOINT).is_file()):
            log(f"fine-tuning: backbone initialized from {cfg.pretrained} (head trained from scratch)")
    if cfg.init_from:  # on resume the checkpoint's weights win; the source's digest is recorded either way
        digest = init_backbone(model, cfg.init_from)
        cfg.extra = {**cfg.extra, "init_from_sha256": digest}
        if log and not (resume and (run_dir / CHECKPOINT).is_file()):
            log(f"fine-tuning: backbone initialized from {cfg.init_from} (head trained from scratch)")
    if cfg.sync_bn:
        model = convert_sync_bn(model, rt.device.type)  # type: ignore[assignment]
    rt = rt.for_model(model)  # the native-crash guard: recorded in the run record through rt.describe()
    if rt.guard and log:
        log(f"note: {rt.guard} layer(s) (fewer than 16 input channels): trained in contiguous format, not "
            "channels_last, whose backward crashes oneDNN on this CPU")
    model = rt.prepare(model)
    opt = make_optimizer(model, cfg)
    hflip = train_set.hflip if cfg.hflip is None else cfg.hflip

    n = len(train_set)
    feeder = (_StreamFeeder(cast(StreamingSet, train_set), cfg, info, rt, hflip) if train_set.streamed
              else _MemoryFeeder(cast(ImageSet, train_set), cfg, info, rt, hflip))
    steps_per_epoch = feeder.steps_per_epoch
    total_steps = steps_per_epoch * cfg.epochs
    start_epoch, start_step, history = 0, 0, []
    if resume and (run_dir / CHECKPOINT).is_file():
        record = load_checkpoint(run_dir, model, opt)
        saved_train = dict(record.get("train", {}))
        if record.get("model") != model_cfg.to_dict() or resume_key(saved_train) != resume_key(asdict(cfg)):
            raise ConfigError(f"{run_dir}: the checkpoint was written by a different configuration; "
                             "use a new output folder or the same arguments to resume")
        start_epoch, start_step = int(record["epoch"]), int(record["step_in_epoch"])
        history = list(record.get("history", []))
        if log:
            log(f"resuming from epoch {start_epoch + 1}, step {start_step} of {run_dir}")
    net: torch.nn.Module = model
    if info.active:
        net = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]

    scaler = torch.amp.GradScaler(enabled=rt.amp_dtype == torch.float16)

    def record_for(epoch: int, step_in_epoch: int) -> dict[str, Any]:
        return {"model": model_cfg.to_dict(), "train": asdict(cfg), "epoch": epoch,
                "step_in_epoch": step_in_epoch, "global_step": epoch * steps_per_epoch + step_in_epoch,
                "history": history, "dataset": train_set.name, "n_train": n, "world_size": info.world}

    def checkpoint(epoch: int, step_in_epoch: int) -> None:
        if not _finite_params(model):
            raise TrainingDiverged(
                f"weights became NaN/inf before epoch {epoch + 1}, step {step_in_epoch}; stopped. "
                f"The last good checkpoint in {run_dir} is kept (try a lower --lr).")
        if main_rank:
            save_checkpoint(run_dir, model, opt, record_for(epoch, step_in_epoch))

    global_step = start_epoch * steps_per_epoch + start_step
    if log:
        log(f"training {model_cfg.arch}(width={model_cfg.width}, head={model_cfg.head}) on "
            f"{train_set.name} ({n} images{', streamed' if streamed else ''}) for {cfg.epochs} epochs "
            f"[{rt.describe()}{f', {info.world} ranks' if info.active else ''}]")
    try:
        for epoch in range(start_epoch, cfg.epochs):
            net.train()
            first = start_step if epoch == start_epoch else 0
            counters = torch.zeros(3, device=rt.device, dtype=torch.float64)  # loss sum, correct, seen
            t0 = time.perf_counter()
            bar = progress_bar(feeder.epoch(epoch, first), total=steps_per_epoch - first,
                               desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=progress, leave=False, unit="step")
            for step, x, y, n_global in bar:
                for g in opt.param_groups:
                    g["lr"] = lr_at(cfg, global_step, total_steps, steps_per_epoch)
                with rt.autocast():
                    out = net(x)
                loss = scaled_loss(out.logits, y, n_global, info)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                with torch.no_grad():
                    valid = y != IGNORE_LABEL
                    counters[0] += loss.detach().double() * (n_global / info.world)
                    counters[1] += ((out.logits.detach().argmax(1) == y) & valid).sum()
                    counters[2] += valid.sum()
                global_step += 1
                if step % 20 == 0 or step == steps_per_epoch - 1:
                    tot = all_reduce_sum(counters.clone())
                    mean_loss = float(tot[0] / tot[2])
                    if not math.isfinite(mean_loss):
                        raise TrainingDiverged(
                            f"loss became {mean_loss} at epoch {epoch + 1}, step {step}; stopped. "
                            f"The last good checkpoint in {run_dir} is kept (try a lower --lr).")
                    bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{float(tot[1] / tot[2]):.3f}",
                                    img_s=f"{float(tot[2]) / (time.perf_counter() - t0):.0f}")
                if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0 \
                        and step + 1 < steps_per_epoch:
                    checkpoint(epoch, step + 1)
                if stop_after_steps is not None and global_step >= stop_after_steps:
                    checkpoint(epoch, step + 1)
                    return TrainResult(model, history, run_dir, model_cfg, cfg)
            bar.close()
            feeder.report(epoch)
            dt = time.perf_counter() - t0
            tot = all_reduce_sum(counters.clone())
            seen = max(1.0, float(tot[2]))
            entry = {"epoch": epoch + 1, "loss": float(tot[0]) / seen, "train_acc": float(tot[1]) / seen,
                     "images_per_s": float(tot[2]) / dt, "seconds": dt, "lr_end": opt.param_groups[0]["lr"]}
            if not math.isfinite(entry["loss"]):
                raise TrainingDiverged(f"loss became {entry['loss']} in epoch {epoch + 1}; stopped. "
                                       f"The last good checkpoint in {run_dir} is kept (try a lower --lr).")
            history.append(entry)
            if main_rank:
                with open(run_dir / TRAIN_LOG, "a") as f:
                    f.write(jsonio.dumps(entry) + "\n")
            if log:
                log(f"epoch {epoch + 1}/{cfg.epochs}: loss {entry['loss']:.4f}  train acc "
                    f"{entry['train_acc']:.4f}  {entry['images_per_s']:.0f} img/s  {dt:.1f}s")
            checkpoint(epoch + 1, 0)
            if on_epoch_end is not None and main_rank:
                model.eval()
                tracked = on_epoch_end(epoch + 1, model)
                if tracked:
                    with open(run_dir / TRACK_LOG, "a") as f:
                        f.write(jsonio.dumps({"epoch": epoch + 1, **tracked}) + "\n")

        model.eval()
        if main_rank:
            _finish(run_dir, model, model_cfg, cfg, train_set, test_data, history, rt, info.world)
        return TrainResult(model, history, run_dir, model_cfg, cfg)
    finally:
        if created_pg:
            dist.destroy_process_group()


def _filled_model_config(model_cfg: ModelConfig, cfg: TrainConfig,
                         train_set: ImageSource) -> ModelConfig:
    """A copy of ``model_cfg`` completed from the training images: input channels, image size, the classes and
    their names, and mean/std when left at their defaults (``model_cfg`` itself is not changed); validated."""
    mean, std = list(model_cfg.mean), list(model_cfg.std)
    if mean == [0.0] and std == [1.0]:
        if cfg.pretrained and train_set.shape[0] == 3:  # a pretrained backbone keeps its (ImageNet) normalization
            mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        elif train_set.streamed:
            mean, std = sample_stats(cast(StreamingSet, train_set), seed=cfg.seed, workers=cfg.workers)
        else:
            mean, std = channel_stats(cast(ImageSet, train_set).images)
    channels, h, w = train_set.shape
    names = train_set.class_names
    filled = replace(model_cfg, in_channels=channels, image_size=(h, w), mean=mean, std=std,
                     num_classes=train_set.num_classes,  # like channels and size, the classes come from the data
                     class_names=list(names) if names is not None else None)
    if filled.num_classes < 2:
        raise ConfigError(f"{train_set.name}: training needs labelled images of at least 2 classes "
                          f"(found {filled.num_classes})")
    filled.validate()
    return filled


def _finish(run_dir: Path, model: Classifier, model_cfg: ModelConfig, cfg: TrainConfig,
            train_set: ImageSource,
            test_data: str | None, history: list[dict[str, Any]], rt: Runtime, world: int) -> None:
    """Write the weights and the run record; keep calibrations that belong to identical weights."""
    weights = save_weights(run_dir, model)
    digest = run_record.file_sha256(weights)
    kept: dict[str, Any] = {}
    kept_detectors: dict[str, Any] = {}
    if (run_dir / META).is_file():
        try:
            old = run_record.read_record(run_dir)
        except L2oodError:
            old = None
        if old is not None and old.weights_sha256 == digest:
            kept = dict(old.calibrations)
            kept_detectors = dict(old.detectors)  # fitted on the same weights (calibrations pin their digests)
    data = run_record.data_record(train_set, test_data)
    rec = run_record.new_record(model_cfg, cfg, data, weights_sha256=digest, history=history,
                                runtime=rt.describe(), world_size=world, calibrations=kept,
                                fit=train_set.view)
    if kept_detectors and data.fingerprint == old.data.fingerprint:  # type: ignore[union-attr]
        rec = rec.model_copy(update={"detectors": kept_detectors})
    run_record.write_record(run_dir, rec)


def init_backbone(model: Classifier, source: str | Path) -> str:
    """Load the backbone weights of ``source`` (a run folder or a ``.safetensors`` file of an l2ood model) into
    ``model``; the linear head keeps its fresh initialization (new classes, new head). Every backbone tensor
    must exist with the same shape. Returns the SHA-256 of the weights file (recorded in the run)."""
    from safetensors.torch import load_file

    from .artifact import refuse_pickle

    path = Path(source)
    refuse_pickle(path)
    file = path / WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"--init-from {source}: no {WEIGHTS} there (give a run folder or a .safetensors file)")
    digest = run_record.file_sha256(file)
    if file.name == WEIGHTS and (file.parent / run_record.META).is_file():  # a run's weights: they must be its own
        try:
            recorded = run_record.read_record(file.parent).weights_sha256
        except L2oodError as e:
            raise ConfigError(f"--init-from {source}: its run record cannot be read ({e})") from None
        if recorded != digest:
            raise ConfigError(f"--init-from {file}: the weights differ from those recorded in "
                              f"{file.parent / run_record.META} (replaced after training, or a write was "
                              "interrupted); restore them or give another run")
    try:
        tensors = load_file(str(file))
    except Exception as e:  # malformed header: safetensors raises several types
        raise ConfigError(f"--init-from {file}: not a readable safetensors file ({e})") from None
    bad = [k for k, v in tensors.items() if k.startswith("backbone.") and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise ConfigError(f"--init-from {file}: NaN or infinite weights in {bad[:3]}: a diverged or damaged model "
                          "cannot start a fine-tune")
    own = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    missing = [k for k in own if k not in tensors]
    wrong = [k for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        raise ConfigError(f"--init-from {file}: its backbone does not fit this model (same --arch and --width "
                          f"and input channels needed); missing {missing[:3]}, other shapes for {wrong[:3]}")
    model.load_state_dict({k: tensors[k] for k in own}, strict=False)
    return digest


def load_pretrained(model: Classifier, path: str | Path) -> str:
    """Initialize ``model``'s backbone from a pretrained weights file (safetensors, or a torch checkpoint read
    with ``weights_only=True``; see :func:`l2ood.models.adapters.load_backbone_weights`); the head keeps its
    fresh initialization. Returns the file's SHA-256 (recorded in the run)."""
    from ..models.adapters import load_backbone_weights, read_weights_file

    left_out = load_backbone_weights(model.backbone, read_weights_file(path), f"--pretrained {path}")
    if left_out and len(left_out) > 8:
        warnings.warn(f"--pretrained {path}: {len(left_out)} tensors not used by the backbone "
                      f"(e.g. {left_out[:3]})", stacklevel=2)
    return run_record.file_sha256(path)


def resume_key(train_cfg: dict[str, Any]) -> dict[str, Any]:
    """Settings that must match to resume (device/precision/checkpoint cadence may change)."""
    return {k: v for k, v in train_cfg.items()
            if k not in ("device", "precision", "checkpoint_every_steps", "extra", "compile", "workers")}
