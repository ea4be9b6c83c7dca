"""The run record: ``RUN/model.json``, typed, versioned, validated, with one writer (this module).

A run folder holds ``model.safetensors`` (weights) and ``model.json``, the record of everything
needed to use, reproduce and trust the weights (schema ``l2ood.run/2``):

==================  =============================================================================
key                 what
==================  =============================================================================
``schema``          ``"l2ood.run/2"``
``model``           :class:`l2ood.models.ModelConfig` (architecture, head, classes, input format)
``train``           :class:`l2ood.models.config.TrainConfig` (hyper-parameters, seed, device, precision)
``data``            :class:`DataRecord`: the exact spec strings of the training images, the held-out
                    images and the ID test images (data set, split, data root, then the seeded
                    holdout/subset selections in order), the number of training images and a
                    SHA-1 fingerprint of their pixels, so the same images can be rebuilt and checked
``preprocessing``   :class:`PreprocessingRecord`: decoder, channels, size, fit and resize method,
                    mean/std — how a file or array becomes the model's input
                    (:mod:`l2ood.data.preprocess`)
``provenance``      :class:`Provenance`: l2ood version, git commit, torch and Python versions,
                    device/precision, world size, creation time
``history``         one entry per epoch (loss, accuracy, images/s, seconds, learning rate)
``train_seconds``   summed epoch times
``weights_sha256``  digest of ``model.safetensors`` (calibrations belong to these weights)
``calibrations``    name → :class:`l2ood.metrics.conformal.Calibration` (``"default"`` drives screens)
``detectors``       detector key → :class:`FittedDetectorRecord`: the fitted statistics saved in
                    ``RUN/detectors/<key>.safetensors`` (``knn``, ``vim.raw``, ...), their SHA-256,
                    hyper-parameters and the weights digest they were fit with
``recipe``          bench recipe name, if any
``upgraded_from``   the schema the record was read from when it was upgraded (0.1.0 records)
==================  =============================================================================

Reading (:func:`read_record`) checks the file size before reading, parses strict JSON (no ``NaN``),
upgrades records written by l2ood 0.1.0 (no ``schema`` key), and validates every key's type and range
(pydantic) before anything is allocated; every problem is reported in one :class:`RunError` naming the
file and the key. Writing (:func:`write_record`, :func:`update_record`) validates again and replaces the
file atomically (unique temporary name + fsync + rename). Nothing else in l2ood writes ``model.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import jsonio
from .data import DATASETS, PARAMETRIC, DataSource, Op, canonical_spec, has_split
from .data.preprocess import DECODER, RESIZE, Preprocessing
from .data.source import ImageSource
from .data.transforms import FIT_CONFIGS
from .errors import RunError
from .metrics.conformal import Calibration
from .models.config import ModelConfig, TrainConfig
from .provenance import code_version
from .runfolder import META, WEIGHTS, atomic_write_bytes, fitted_file, run_lock  # the layout and the writers

SCHEMA = "l2ood.run/2"
MAX_RECORD_BYTES = 256 * 1024 * 1024
RECORD_WAIT_S = 10.0  # how long a record update waits for another writer

_Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class OpRecord(_Model):
    """One seeded selection (see :class:`l2ood.data.Op`)."""

    op: Literal["holdout", "subset"]
    n: Annotated[int, Field(ge=1, le=10**10)]
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)]
    part: Literal["rest", "holdout"] | None = None

    @model_validator(mode="after")
    def _part(self) -> OpRecord:
        if (self.op == "holdout") != (self.part is not None):
            raise ValueError("'part' is required for a holdout and not allowed for a subset")
        return self


class SourceRecord(_Model):
    """How to load a set of images again: ``load_dataset(spec, split, root)`` then ``ops``."""

    spec: Annotated[str, Field(min_length=1, max_length=8192)]
    split: Annotated[str, Field(min_length=1, max_length=64)]
    root: Annotated[str, Field(max_length=8192)] | None = None
    ops: Annotated[list[OpRecord], Field(max_length=64)] = []
    stream: bool = False  # read batch by batch from disk (l2ood.data.stream)

    @classmethod
    def of(cls, src: DataSource) -> SourceRecord:
        return cls.model_validate(src.to_dict())

    def source(self) -> DataSource:
        return DataSource(self.spec, self.split, self.root,
                          tuple(Op(o.op, o.n, o.seed, o.part or "") for o in self.ops), self.stream)

    def describe(self) -> str:
        return self.source().describe()


class DataRecord(_Model):
    """Where a run's images come from (``None``: not recorded, e.g. a set built from tensors)."""

    train: SourceRecord | None
    holdout: SourceRecord | None = None
    test: SourceRecord | None = None
    test_origin: Literal["test-data", "test-split", "holdout", "none"] = "none"
    n_train: Annotated[int, Field(ge=0)]
    fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")] | None = None


class PreprocessingRecord(_Model):
    """:class:`l2ood.data.preprocess.Preprocessing` plus the normalization inside the model: a named config, as
    timm's pretrained configs record it — decoder, input channels and size, the named fit and its geometry
    (``resize_mode``, ``crop_pct``; :data:`l2ood.data.transforms.FIT_CONFIGS`), the interpolation (``resize``)
    and mean/std. Records written before ``resize_mode``/``crop_pct`` were recorded get them from the fit's name;
    values that contradict the name are refused."""

    decode: Annotated[str, Field(max_length=64)] = DECODER
    channels: Literal[1, 3]
    size: tuple[Annotated[int, Field(ge=1, le=4096)], Annotated[int, Field(ge=1, le=4096)]]
    fit: Literal["resize", "crop", "imagenet"] = "resize"
    resize_mode: Literal["stretch", "shorter-side"] | None = None
    crop_pct: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    resize: Annotated[str, Field(max_length=64)] = RESIZE
    mean: Annotated[list[_Finite], Field(min_length=1, max_length=3)]
    std: Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]], Field(min_length=1, max_length=3)]

    @model_validator(mode="after")
    def _geometry(self) -> PreprocessingRecord:
        fit = FIT_CONFIGS[self.fit]
        if self.resize_mode is not None and self.resize_mode != fit.resize:
            raise ValueError(f"resize_mode {self.resize_mode!r} contradicts fit {self.fit!r} ({fit.resize!r})")
        if self.crop_pct is not None and self.crop_pct != fit.crop_pct:
            raise ValueError(f"crop_pct {self.crop_pct} contradicts fit {self.fit!r} ({fit.crop_pct})")
        self.resize_mode, self.crop_pct = fit.resize, fit.crop_pct
        return self

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.channels, self.size, self.fit, self.decode, self.resize)


class Provenance(_Model):
    """Which code, on which machine settings, produced the run."""

    l2ood: Annotated[str, Field(max_length=64)]
    git_commit: Annotated[str, Field(max_length=64)] | None = None
    git_dirty: bool | None = None
    torch: Annotated[str, Field(max_length=64)] = "unknown"
    python: Annotated[str, Field(max_length=64)] = "unknown"
    runtime: Annotated[str, Field(max_length=128)] = "unknown"  # e.g. "cpu / bf16 / channels_last"
    world_size: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    created: Annotated[str, Field(max_length=64)] = ""


class HistoryEntry(_Model):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    epoch: Annotated[int, Field(ge=1)]
    loss: _Finite
    train_acc: Annotated[float, Field(ge=0, le=1)]
    images_per_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    lr_end: _Finite = 0.0


_Scalar = int | float | str | bool | None


class FittedDetectorRecord(_Model):
    """A detector fitted on the run's training split, saved as safetensors (:mod:`l2ood.detectors.store`).

    ``file`` must be :func:`fitted_file` of its key (no other path is ever read), ``weights_sha256`` the
    record's own (statistics of other weights are not kept), ``detector`` a registered detector that needs
    fitting; ``sha256`` is the file's digest, checked whenever it is loaded."""

    file: Annotated[str, Field(max_length=128)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    detector: Annotated[str, Field(min_length=1, max_length=64)]
    variant: Literal["trained", "raw"] = "trained"
    hyper_parameters: Annotated[dict[Annotated[str, Field(max_length=64)], _Scalar], Field(max_length=64)] = {}
    weights_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    n_fit: Annotated[int, Field(ge=1)]
    fit_data: Annotated[str, Field(max_length=8192)] = ""

    @model_validator(mode="after")
    def _known(self) -> FittedDetectorRecord:
        from .detectors import DETECTORS

        cls = DETECTORS.get(self.detector)
        if cls is None:
            raise ValueError(f"unknown detector {self.detector!r}")
        if not cls.needs_fit:
            raise ValueError(f"detector {self.detector!r} has no fitted statistics")
        return self


_FittedKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_+.-]{1,64}(:raw)?$")]
_Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ImportRecord(_Model):
    """Where an imported classifier (one l2ood did not train; ``l2ood import``) came from.

    ``source`` is the architecture name (``torchvision:NAME``, ``timm:NAME``, an l2ood architecture) or the
    factory (``factory:package.module:function``; its keyword arguments are in the model config);
    ``weights_file`` / ``weights_file_sha256`` the file the weights were read from (``None``: the weights the
    factory built); ``factory_sha256`` the factory module's source file at import; ``head_layer`` the
    classifier head and ``head_found`` whether l2ood found it (else the user named it)."""

    kind: Literal["imported"] = "imported"
    source: Annotated[str, Field(min_length=1, max_length=512)]
    weights_file: Annotated[str, Field(max_length=8192)] | None = None
    weights_file_sha256: _Digest | None = None
    factory_sha256: _Digest | None = None
    head_layer: Annotated[str, Field(max_length=512)] | None = None
    head_found: bool = False
    preset: Annotated[str, Field(max_length=64)] | None = None  # the named preprocessing it was imported with


class RunRecord(_Model):
    """The whole record (see the module doc)."""

    schema_: Literal["l2ood.run/2"] = Field("l2ood.run/2", alias="schema")
    model: ModelConfig
    train: TrainConfig
    data: DataRecord
    preprocessing: PreprocessingRecord
    provenance: Provenance
    history: Annotated[list[HistoryEntry], Field(max_length=100_000)] = []
    train_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    weights_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    calibrations: Annotated[dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], Calibration],
                            Field(max_length=1000)] = {}
    recipe: Annotated[str, Field(max_length=128)] | None = None
    upgraded_from: Annotated[str, Field(max_length=64)] | None = None
    detectors: Annotated[dict[_FittedKey, FittedDetectorRecord], Field(max_length=1000)] = {}
    imported: ImportRecord | None = None  # set for a classifier l2ood did not train (`l2ood import`)

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> RunRecord:
        m, p = self.model, self.preprocessing
        if p.channels != m.in_channels or tuple(p.size) != tuple(m.image_size):
            raise ValueError(f"preprocessing ({p.channels} channels, {p.size[0]}x{p.size[1]}) does not match the "
                             f"model's input ({m.in_channels} channels, {m.image_size[0]}x{m.image_size[1]})")
        if len(m.mean) != m.in_channels or len(m.std) != m.in_channels:
            raise ValueError(f"model mean/std need {m.in_channels} value(s) each")
        if [float(v) for v in p.mean] != [float(v) for v in m.mean] or \
                [float(v) for v in p.std] != [float(v) for v in m.std]:
            raise ValueError("preprocessing mean/std differ from the model's")
        if m.class_names is not None and len(m.class_names) != m.num_classes:
            raise ValueError(f"{len(m.class_names)} class names for {m.num_classes} classes")
        for key, fd in self.detectors.items():
            if fd.file != fitted_file(key):
                raise ValueError(f"detectors.{key}: file must be {fitted_file(key)!r}, got {fd.file!r}")
            if key.split(":")[0] != fd.detector or (fd.variant == "raw") != key.endswith(":raw"):
                raise ValueError(f"detectors.{key}: the key does not name detector {fd.detector!r} ({fd.variant})")
            if fd.weights_sha256 != self.weights_sha256:
                raise ValueError(f"detectors.{key}: fitted with other weights ({fd.weights_sha256[:12]}…) than the "
                                 f"run's ({self.weights_sha256[:12]}…)")
        for name, cal in self.calibrations.items():
            if cal.weights_sha256 is not None and cal.weights_sha256 != self.weights_sha256:
                raise ValueError(f"calibrations.{name}: made with other weights ({cal.weights_sha256[:12]}…) than "
                                 f"the run's ({self.weights_sha256[:12]}…); calibrate again")
        return self

    def to_json(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", by_alias=True)
        d["model"] = self.model.to_dict()
        for key in ("train", "holdout", "test"):
            for op in (d["data"].get(key) or {}).get("ops", []):
                if op.get("part") is None:
                    op.pop("part", None)  # a subset has no part
        # the keys of fitted detectors and combined calibrations are written only when used, so that records
        # that do not use them stay readable by earlier l2ood versions (which refuse unknown keys)
        for cal in d.get("calibrations", {}).values():
            for k in ("members", "member_scores", "combine"):
                if cal.get(k) is None:
                    cal.pop(k, None)
            if not cal.get("fitted"):
                cal.pop("fitted", None)
            if cal.get("weights_sha256") is None:
                cal.pop("weights_sha256", None)
            if not cal.get("score_versions"):
                cal.pop("score_versions", None)
        if not d.get("detectors"):
            d.pop("detectors", None)
        if d.get("imported") is None:
            d.pop("imported", None)
        return d

    @property
    def test_description(self) -> str:
        t = self.data.test
        return "none" if t is None else f"{t.describe()} [{self.data.test_origin}]"


# ------------------------------------------------------------------------------------------------ helpers

def _errors(e: ValidationError, where: str) -> str:
    lines = []
    for err in e.errors()[:20]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = repr(got)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        lines.append(f"  {loc}: {err['msg']}" + ("" if isinstance(got, dict | list) else f" (got {shown})"))
    more = len(e.errors()) - 20
    return f"{where}: invalid run record:\n" + "\n".join(lines) + (f"\n  ... and {more} more" if more > 0 else "")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ building

def resolve_test(train: DataSource | None, holdout: DataSource | None,
                 test_data: str | None, root: str | None) -> tuple[DataSource | None, str]:
    """The ID test images of a run — never training images — and where they come from: the explicit
    ``test_data`` spec; else the training data set's own ``test`` split; else the holdout."""
    stream = train is not None and train.stream
    if test_data:
        spec = canonical_spec(test_data)
        streamable = spec.split(":", 1)[0] in ("imagefolder", "imglist", "wds")
        return DataSource(spec, "test", root, stream=stream and streamable), "test-data"
    if train is not None and has_split(train.spec, "test"):
        return DataSource(train.spec, "test", train.root, stream=stream), "test-split"
    if holdout is not None:
        return holdout, "holdout"
    return None, "none"


def holdout_of(train: DataSource | None) -> DataSource | None:
    """The held-out images of a training source (its ops up to the holdout, keeping the other part)."""
    if train is None:
        return None
    for i, op in enumerate(train.ops):
        if op.kind == "holdout":
            return DataSource(train.spec, train.split, train.root,
                              (*train.ops[:i], Op("holdout", op.n, op.seed, "holdout")), train.stream)
    return None


def data_record(train_set: ImageSource, test_data: str | None = None, *,
                with_fingerprint: bool = True) -> DataRecord:
    """The :class:`DataRecord` of a training set (its :attr:`l2ood.data.ImageSet.source`). The fingerprint
    hashes the pixels of an in-memory set, the index (paths, sizes, labels) of a streamed one."""
    src = train_set.source
    hold = holdout_of(src)
    test, origin = resolve_test(src, hold, test_data, src.root if src else None)
    return DataRecord(
        train=SourceRecord.of(src) if src else None,
        holdout=SourceRecord.of(hold) if hold else None,
        test=SourceRecord.of(test) if test else None,
        test_origin=origin,  # type: ignore[arg-type]
        n_train=len(train_set),
        fingerprint=train_set.fingerprint() if with_fingerprint else None,
    )


def new_record(model_cfg: ModelConfig, train_cfg: TrainConfig, data: DataRecord, *, weights_sha256: str,
               history: list[dict[str, Any]], runtime: str, world_size: int = 1, fit: str = "resize",
               calibrations: dict[str, Calibration] | None = None) -> RunRecord:
    """A validated record for freshly trained weights."""
    version = code_version()
    rec = {
        "schema": SCHEMA,
        "model": model_cfg.to_dict(),
        "train": asdict(train_cfg),
        "data": data.model_dump(mode="json"),
        "preprocessing": {"channels": model_cfg.in_channels, "size": list(model_cfg.image_size), "fit": fit,
                          "mean": list(model_cfg.mean), "std": list(model_cfg.std)},
        "provenance": {**{k: version[k] for k in ("l2ood", "git_commit", "git_dirty", "torch", "python")},
                       "runtime": runtime, "world_size": world_size,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "history": history,
        "train_seconds": float(sum(h.get("seconds", 0.0) for h in history)),
        "weights_sha256": weights_sha256,
        "calibrations": {k: asdict(v) for k, v in (calibrations or {}).items()},
        "recipe": train_cfg.extra.get("recipe"),
    }
    return validate_record(rec, "new run record")


def validate_record(obj: Any, where: str) -> RunRecord:
    """Validate a record dict (upgraded first when it has no ``schema``); raises :class:`RunError`."""
    if not isinstance(obj, dict):
        raise RunError(f"{where}: a run record is a JSON object, got {type(obj).__name__}")
    schema = obj.get("schema")
    if schema is None:
        obj = upgrade_v1(obj, where)
    elif schema != SCHEMA:
        raise RunError(f"{where}: schema {schema!r} is not supported by l2ood "
                       f"{code_version()['l2ood']} (reads {SCHEMA} and 0.1.0 records); upgrade l2ood")
    try:  # strict: "16" is not a width; JSON text so that arrays may fill tuple fields
        return RunRecord.model_validate_json(json.dumps(obj, allow_nan=True), strict=True)
    except ValidationError as e:
        raise RunError(_errors(e, where)) from None


# ------------------------------------------------------------------------------------------------ 0.1.0 records

def _v1_spec(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return None
    if name in DATASETS or any(name.startswith(p.split(":")[0] + ":") for p in PARAMETRIC):
        return canonical_spec(name)
    return None  # 0.1.0 bench runs recorded a display name that cannot be loaded again


def upgrade_v1(old: dict[str, Any], where: str) -> dict[str, Any]:
    """Translate a record written by l2ood 0.1.0 (no ``schema``) into ``l2ood.run/2``.

    0.1.0 recorded ``dataset`` (the spec as typed), ``data.holdout`` ``{n, seed}``, ``data.test`` and
    ``data.train_subset`` (drawn with the training seed), ``runtime``, ``world_size``, ``history``,
    ``train_seconds``, one ``calibration`` and ``recipe``. Relative paths are resolved against the
    current directory; a dataset name that cannot be loaded again leaves ``data.train`` empty.
    """
    if not isinstance(old.get("model"), dict):
        raise RunError(f"{where}: not an l2ood run record (no 'model' object)")
    model = dict(old["model"])
    def obj(v: Any) -> dict[str, Any]:
        return v if isinstance(v, dict) else {}

    old_train = obj(old.get("train"))
    train = {k: old_train.get(k, v) for k, v in asdict(TrainConfig()).items()}
    data = obj(old.get("data"))
    hold = obj(data.get("holdout"))
    spec = _v1_spec(old.get("dataset", "fashion-mnist"))
    src: DataSource | None = None
    if spec is not None:
        src = DataSource(spec, "train")
        if isinstance(hold.get("n"), int) and hold["n"] > 0:
            src = src.then(Op("holdout", int(hold["n"]), int(hold.get("seed", 0)), "rest"))
        if isinstance(data.get("train_subset"), int) and data["train_subset"] > 0:
            src = src.then(Op("subset", int(data["train_subset"]), int(train.get("seed", 0))))
    hsrc = holdout_of(src)
    test, origin = resolve_test(src, hsrc, data.get("test") if isinstance(data.get("test"), str) else None, None)
    mean = model.get("mean", [0.0])
    std = model.get("std", [1.0])
    size = model.get("image_size", [32, 32])
    cal = old.get("calibration")
    weights = Path(where).parent / WEIGHTS
    try:
        digest = file_sha256(weights) if weights.is_file() else "0" * 64
    except OSError:
        digest = "0" * 64
    history = [h for h in old.get("history", []) if isinstance(h, dict)] if isinstance(old.get("history"), list) else []
    return {
        "schema": SCHEMA,
        "model": model,
        "train": train,
        "data": {"train": src.to_dict() if src else None, "holdout": hsrc.to_dict() if hsrc else None,
                 "test": test.to_dict() if test else None, "test_origin": origin,
                 "n_train": old.get("n_train", 0), "fingerprint": None},
        "preprocessing": {"channels": model.get("in_channels", 3), "size": size, "fit": "resize",
                          "decode": "pillow-rgb (l2ood 0.1.0)", "resize": "pillow-bilinear (l2ood 0.1.0)",
                          "mean": mean, "std": std},
        "provenance": {"l2ood": "0.1.0", "runtime": str(old.get("runtime", "unknown"))[:128],
                       "world_size": old.get("world_size", 1)},
        "history": history,
        "train_seconds": old.get("train_seconds"),
        "weights_sha256": digest,
        "calibrations": {"default": cal} if isinstance(cal, dict) else {},
        "recipe": old.get("recipe"),
        "upgraded_from": "0.1.0",
    }


# ------------------------------------------------------------------------------------------------ I/O

def read_record(run_dir: str | Path) -> RunRecord:
    """Read and validate ``RUN/model.json`` (size-checked, strict JSON, 0.1.0 records upgraded)."""
    path = Path(run_dir) / META
    try:
        obj = jsonio.read_strict(path, MAX_RECORD_BYTES, "run record")
    except FileNotFoundError:
        raise RunError(f"{path}: no run record (not a trained l2ood run; train one with `l2ood train`)") from None
    return validate_record(obj, str(path))


def write_record(run_dir: str | Path, record: RunRecord) -> Path:
    """Validate and write ``RUN/model.json`` atomically; the only way l2ood writes a run record."""
    path = Path(run_dir) / META
    obj = record.to_json()
    validate_record(obj, str(path))  # never write what could not be read back
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, text.encode())
    return path


def update_record(run_dir: str | Path, change: Callable[[RunRecord], RunRecord], what: str = "") -> RunRecord:
    """Read, change and write back a record under the run folder's writer lock (a 0.1.0 record is written
    back upgraded). Another writer's short update is waited for (up to :data:`RECORD_WAIT_S` seconds), so two
    calibrations finishing together both land; a training holding the folder makes it fail with one message."""
    with run_lock(run_dir, what or f"update of {META}", wait=RECORD_WAIT_S):
        rec = change(read_record(run_dir))
        write_record(run_dir, rec)
    return rec


def add_calibration(run_dir: str | Path, calibration: Calibration, name: str = "default") -> RunRecord:
    """Store ``calibration`` under ``name`` (replacing one of that name; others are kept)."""
    def change(rec: RunRecord) -> RunRecord:
        return rec.model_copy(update={"calibrations": {**rec.calibrations, name: calibration}})

    return update_record(run_dir, change, f"l2ood calibrate ({name})")


def add_fitted_detector(run_dir: str | Path, key: str, entry: FittedDetectorRecord) -> RunRecord:
    """Record that ``RUN/{entry.file}`` holds the fitted statistics of detector ``key`` (replacing an entry of
    that key). The file must already be written; the record is validated (file name, weights digest)."""
    def change(rec: RunRecord) -> RunRecord:
        return rec.model_copy(update={"detectors": {**rec.detectors, key: entry}})

    return update_record(run_dir, change, f"l2ood calibrate (fit {key})")

