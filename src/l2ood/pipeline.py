"""Train-then-evaluate, shared by the command line (``train``, ``demo``) and the bench.

* :func:`training_data`: a data set's training images minus a seeded holdout, optionally a seeded
  subset — each step recorded in the images' :class:`~l2ood.data.DataSource`, so the run record can
  rebuild them exactly.
* :func:`train_run`: train (or resume) one run, optionally tracked every K epochs; returns the
  :class:`~l2ood.run.Run`.
* :func:`train_and_evaluate`: a finished run is kept, an unfinished one trained or resumed, then
  evaluated with every requested detector; results land in ``RUN/eval/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from .data import DataError, load_source
from .data.source import ImageSource, open_images
from .errors import ConfigError
from .evaluation import EvalResult, evaluate
from .models import ModelConfig
from .record import META, holdout_of, resolve_test
from .run import Run
from .train import TrainConfig, train
from .train.distributed import dist_from_env
from .train.trainer import resume_key

Log = Callable[[str], None] | None
Images = ImageSource


def training_data(dataset: str, *, holdout: int = 5000, holdout_seed: int = 0, subset: int | None = None,
                  subset_seed: int = 0, root: str | Path | None = None,
                  size: tuple[int, int] | None = None, data_path: str = "memory") -> tuple[Images, Images | None]:
    """``(training images, held-out images or None)`` of ``dataset``'s train split.

    The holdout (``holdout`` images, seed ``holdout_seed``) is split off first; ``subset`` then takes a
    seeded subset (seed ``subset_seed``) of the rest. Both are recorded in the sets' sources.
    ``data_path`` (``memory``, ``stream`` or ``auto``: :func:`l2ood.data.source.choose_data_path`, the one place
    that decides): streamed sets are :class:`~l2ood.data.stream.StreamingSet` indexes (default size 224×224) read
    batch by batch."""
    full = open_images(dataset, "train", root=root, size=size, data_path=data_path)
    if full.labels is None:
        raise DataError(f"{dataset}: training data need labels")
    if holdout < 0:
        raise ConfigError(f"holdout must be >= 0, got {holdout}")
    hold: Images | None = None
    rest = full
    if holdout:
        if holdout >= len(full):
            raise DataError(f"--holdout {holdout} leaves no training images ({len(full)} in total)")
        rest, hold = full.split(holdout, seed=holdout_seed)
    if subset:
        rest = rest.subset(subset, seed=subset_seed)
    return rest, hold


def id_test_for(train_set: Images, test_data: str | None = None, holdout: Images | None = None,
                root: str | Path | None = None) -> tuple[Images, str]:
    """The ID test images a run trained on ``train_set`` will record (see :func:`l2ood.record.resolve_test`)."""
    src = train_set.source
    test, origin = resolve_test(src, holdout_of(src), test_data, None if root is None else str(root))
    if test is None:
        raise DataError(f"{train_set.name} has no separate test split and no holdout was kept: retrain with "
                        "--holdout N or --test-data SPEC so ID test images are not training images")
    if origin == "holdout" and holdout is not None:
        return holdout, f"{test.describe()} [holdout]"
    _, h, w = train_set.shape
    return load_source(test, root=root, size=(h, w)), f"{test.describe()} [{origin}]"


def train_run(train_set: Images, model_cfg: ModelConfig, train_cfg: TrainConfig, out: str | Path, *,
              test_data: str | None = None, holdout: Images | None = None, track: str | None = None,
              track_ood: str | None = None, data_root: str | Path | None = None, resume: bool = False,
              overwrite: bool = False, progress: bool = True, log: Log = print) -> Run | None:
    """Train one run into ``out`` (see :func:`l2ood.train.train`); returns it (``None`` on ranks > 0).

    ``track="every=K[,n_train=N,...]"`` records NC metrics and ‖z‖ statistics every K epochs
    (:mod:`l2ood.analysis.track`) on ``track_ood`` OoD sets."""
    tracker = None
    if track:
        from .analysis.track import TrackConfig, Tracker
        from .runtime import resolve_runtime

        tcfg = TrackConfig.parse(track, track_ood)
        id_test, _ = id_test_for(train_set, test_data, holdout, data_root)
        # streamed data: the tracked subsets are decoded once (evaluation view) and kept in memory
        track_train = train_set.in_memory(tcfg.n_train or 5000)
        track_test = id_test.in_memory(tcfg.n_test)
        tracker = Tracker.build(tcfg, track_train, track_test, out,
                                resolve_runtime(train_cfg.device, train_cfg.precision), train_cfg.epochs,
                                root=data_root)
    train(train_set, model_cfg, train_cfg, out, resume=resume, progress=progress, log=log, on_epoch_end=tracker,
          test_data=test_data, overwrite=overwrite)
    if not dist_from_env().is_main:
        return None
    return Run.load(out, device=train_cfg.device, precision=train_cfg.precision, data_root=data_root)


def check_same_settings(run: Run, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Refuse a finished run trained with other settings than ``model_cfg``/``train_cfg`` (architecture, width,
    head, and every training hyper-parameter that an interrupted training must match to resume), so that a
    result is never attributed to settings its model was not trained with."""
    have = {"arch": run.config.arch, "width": run.config.width, "head": run.config.head}
    want = {"arch": model_cfg.arch, "width": model_cfg.width, "head": model_cfg.head}
    have.update(resume_key(asdict(run.record.train)))
    want.update(resume_key(asdict(train_cfg)))
    diff = [f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in sorted(set(have) | set(want))
            if have.get(k) != want.get(k)]
    if diff:
        raise ConfigError(f"{run.path}: holds a model trained with other settings ({'; '.join(diff)}); use another "
                          "output folder, or the same settings to evaluate it")


def train_and_evaluate(train_set: Images, model_cfg: ModelConfig, train_cfg: TrainConfig, out: str | Path, *,
                       ood_sets: Sequence[Images], detectors: list[str], id_test: Images | None = None,
                       test_data: str | None = None, holdout: Images | None = None,
                       data_root: str | Path | None = None, batch_size: int = 512, progress: bool = True,
                       log: Log = print, combined: Sequence[str] = (), samples: str | None = "csv"
                       ) -> tuple[Run, EvalResult]:
    """Train (a finished run in ``out`` is kept; an interrupted one resumed), then evaluate.

    ``id_test``: the ID test images (default: the run's recorded ID test set). Detectors that need ID
    statistics are fitted on ``train_set`` — the images the run was trained on — once, and kept in
    ``out/detectors/``. ``combined``: combined columns
    (see :func:`l2ood.evaluation.evaluate`), cross-fitted on two halves of the ID test images. The results are
    saved to ``out/eval/`` (``results.json``, ``scores.npz``, ``samples.csv``; :mod:`l2ood.results`)."""
    out = Path(out)
    if (out / META).is_file():
        run = Run.load(out, device=train_cfg.device, precision=train_cfg.precision, data_root=data_root)
        check_same_settings(run, model_cfg, train_cfg)
        if log:
            log(f"{out}: already trained, evaluating")
    else:
        trained = train_run(train_set, model_cfg, train_cfg, out, test_data=test_data, data_root=data_root,
                            resume=True, progress=progress, log=log)
        assert trained is not None, "train_and_evaluate runs on one process"
        run = trained
    run.adopt(train_set, holdout)  # the images in memory are the run's: checked, not loaded again
    where = None
    if id_test is None:
        id_test, where = run.id_test()
    r = evaluate(run, id_test, ood_sets, detectors, batch_size=batch_size, progress=progress,
                 id_source=where or id_test.name, combined=combined, combine_crossfit=bool(combined))
    r.save(out / "eval", samples=samples)
    return run, r
