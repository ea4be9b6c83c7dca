"""The results record: ``results.json``, typed, versioned, validated, with one writer (this module).

Every evaluation l2ood writes — ``l2ood evaluate``, ``l2ood demo``, a run's ``RUN/eval/`` and every bench cell —
is one :class:`ResultsFile` (schema ``l2ood.results/1``)::

    {"schema": "l2ood.results/1",
     "runs": {"<label>": ResultsRecord, ...},      # one entry per evaluated model
     "bench": BenchCell | null,                    # bench cells: arch, variant, seed, hyper-parameters
     "command": "l2ood evaluate ..." | null}

A :class:`ResultsRecord` is one model's evaluation: the model and training configs, the ID test set and accuracy,
the reported columns (``detectors``) with their hyper-parameters, and per OoD set its size and every column's
:class:`Metrics` (AUROC, FPR@95 in both conventions, AUPR-In/Out; :mod:`l2ood.metrics.ood`), plus combined
columns and hyper-parameter selection when used. Every value is a fraction in [0, 1]; missing values are ``null``.

Writing (:func:`write_results`) validates and replaces the file atomically (a kill mid-write leaves the old file
or the new one, never a truncated one). Reading (:func:`read_results`) parses strict JSON, validates it, and
upgrades the files written before the schema existed (l2ood 0.2: a flat record, a dict of records by label, or a
bench cell); anything else is refused with one :class:`ResultsError` naming the file.

The per-sample table (:func:`write_samples`): one row per image of every data set (ID test first) with its data
set, index, path (streamed sets), label, predicted class and one column per detector score, as CSV or (with
``pyarrow`` installed) Parquet.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import jsonio
from .errors import RunError
from .runfolder import atomic_write_bytes

SCHEMA = "l2ood.results/1"
MAX_RESULTS_BYTES = 512 * 1024 * 1024
_Frac = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class ResultsError(RunError):
    """A results file that cannot be read (missing, malformed, or of an unknown schema)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Metrics(_Model):
    """One column on one OoD set (:mod:`l2ood.metrics.ood`; ``fpr95_ood_pos`` is ``None`` in files written before
    it existed). Further metrics a benchmark adds are kept."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    auroc: _Frac
    fpr95: _Frac
    fpr95_ood_pos: _Frac | None = None
    aupr_in: _Frac
    aupr_out: _Frac


class OodResult(_Model):
    """One OoD set: its size and every column's metrics."""

    n: Annotated[int, Field(ge=0)]
    detectors: dict[str, Metrics]


class ResultsRecord(_Model):
    """One model's evaluation (see the module doc)."""

    model: dict[str, Any]
    head: str
    id_dataset: str
    id_source: str | None = None
    n_id_test: Annotated[int, Field(ge=0)]
    id_accuracy: _Frac | None = None  # None: the ID test images have no labels
    detectors: list[str]
    detector_params: dict[str, dict[str, Any]] = {}
    ood: dict[str, OodResult]
    runtime: str = ""
    train: dict[str, Any] = {}
    run: str | None = None
    code_version: dict[str, Any] = {}
    convention: str = ""
    combined: dict[str, dict[str, Any]] | None = None
    selection: dict[str, Any] | None = None
    command: str | None = None

    def metric(self, ood: str, column: str, key: str = "auroc") -> float | None:
        """One metric of one column on one OoD set (``None`` where it is missing)."""
        m = self.ood.get(ood)
        d = None if m is None else m.detectors.get(column)
        v = None if d is None else getattr(d, key, None)
        if v is None and d is not None and d.model_extra:
            v = d.model_extra.get(key)
        return None if v is None else float(v)

    def rows(self) -> Iterator[tuple[str, str, Metrics]]:
        """``(OoD set, column, metrics)`` for every reported pair, in order."""
        for s, o in self.ood.items():
            for c, m in o.detectors.items():
                yield s, c, m


class BenchCell(_Model):
    """What identifies a bench cell: the matrix coordinates and the hyper-parameters its model was trained with."""

    arch: str
    variant: str
    seed: int
    requested: list[str]
    groups: dict[str, str]
    train_seconds: Annotated[float, Field(ge=0)] = 0.0
    benchmark: str | None = None
    recipe: str | None = None
    hyper: dict[str, Any] | None = None  # None: a cell written before cells were keyed


class ResultsFile(_Model):
    """``results.json`` (see the module doc)."""

    schema_: Literal["l2ood.results/1"] = Field("l2ood.results/1", alias="schema")
    runs: dict[str, ResultsRecord]
    bench: BenchCell | None = None
    command: str | None = None
    upgraded_from: str | None = None  # "0.2" when read from a file written before the schema

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    @classmethod
    def new(cls, runs: Mapping[str, ResultsRecord], *, bench: BenchCell | None = None,
            command: str | None = None) -> ResultsFile:
        """A results file of the current schema."""
        return cls.model_validate({"schema": SCHEMA, "runs": dict(runs), "bench": bench, "command": command})

    @property
    def only(self) -> ResultsRecord:
        """The single record of a one-model file (bench cells, ``RUN/eval``)."""
        if len(self.runs) != 1:
            raise ResultsError(f"expected one evaluated model, the file holds {len(self.runs)}")
        return next(iter(self.runs.values()))

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=False)


def _errors(e: ValidationError, where: str) -> str:
    parts = []
    for err in e.errors()[:8]:
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{len(e.errors()) - 8} more)" if len(e.errors()) > 8 else ""
    return f"{where}: invalid results file: " + "; ".join(parts) + more


def record_of(obj: Mapping[str, Any], where: str = "results") -> ResultsRecord:
    """Validate one record (a dict as :func:`l2ood.evaluation.evaluate` builds it)."""
    try:
        return ResultsRecord.model_validate(jsonio.clean(dict(obj)))
    except ValidationError as e:
        raise ResultsError(_errors(e, where)) from None


def _is_record(v: Any) -> bool:
    return isinstance(v, dict) and "ood" in v and "detectors" in v


def _label(rec: dict[str, Any]) -> str:
    return Path(rec["run"]).name if rec.get("run") else str(rec.get("id_dataset", "model"))


def upgrade(obj: Any, where: str) -> dict[str, Any]:
    """A results file written before the schema (l2ood 0.2) in the schema's shape; refuses anything else."""
    if not isinstance(obj, dict):
        raise ResultsError(f"{where}: not an l2ood results file (a JSON object is expected)")
    if "schema" in obj:
        if obj["schema"] != SCHEMA:
            raise ResultsError(f"{where}: results schema {obj['schema']!r} is not {SCHEMA!r} (written by another "
                               "l2ood version); re-run the evaluation with this version")
        return obj
    if _is_record(obj):  # flat: demo, bench runs, RUN/eval
        return {"schema": SCHEMA, "runs": {_label(obj): obj}, "upgraded_from": "0.2"}
    if "results" in obj and "arch" in obj and _is_record(obj["results"]):  # a bench cell
        cell = {k: obj[k] for k in ("arch", "variant", "seed", "requested", "groups", "train_seconds") if k in obj}
        res = dict(obj["results"])
        if not res.get("code_version"):  # the cell's own when its results carry none
            res["code_version"] = obj.get("code_version") or {}
        name = f"{obj['arch']}-{obj.get('variant', '?')}-seed{obj.get('seed', '?')}"
        return {"schema": SCHEMA, "runs": {name: res}, "bench": cell, "upgraded_from": "0.2"}
    if obj and all(_is_record(v) for v in obj.values()):  # nested by label: `l2ood evaluate`
        runs = {k: dict(v) for k, v in obj.items()}
        commands = {v.get("command") for v in runs.values()}
        return {"schema": SCHEMA, "runs": runs, "command": commands.pop() if len(commands) == 1 else None,
                "upgraded_from": "0.2"}
    raise ResultsError(f"{where}: not an l2ood results file (no 'schema' key and not the shape of a results file "
                       "written by l2ood 0.2)")


def read_results(path: str | Path) -> ResultsFile:
    """Read, upgrade and validate a results file (see the module doc)."""
    path = Path(path)
    try:
        obj = jsonio.read_strict(path, MAX_RESULTS_BYTES, "results file")
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except RunError as e:
        raise ResultsError(str(e)) from None
    obj = upgrade(obj, str(path))
    try:
        return ResultsFile.model_validate(obj)
    except ValidationError as e:
        raise ResultsError(_errors(e, str(path))) from None


def write_results(path: str | Path, results: ResultsFile) -> Path:
    """Validate and write ``results`` to ``path`` atomically (strict JSON, indent 1)."""
    path = Path(path)
    obj = results.to_json()
    try:
        ResultsFile.model_validate(obj)
    except ValidationError as e:
        raise ResultsError(_errors(e, str(path))) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (jsonio.dumps(obj, indent=1) + "\n").encode())
    return path


def write_scores(path: str | Path, scores: Mapping[str, Mapping[str, np.ndarray]]) -> Path:
    """Raw scores ``{set: {column: (n,)}}`` as ``set/column`` arrays of an ``.npz`` file, written atomically."""
    buf = io.BytesIO()
    arrays = {f"{s}/{c}": np.asarray(v) for s, cc in scores.items() for c, v in cc.items()}
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub: **kwds as bool
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


SAMPLE_COLUMNS = ("dataset", "index", "path", "label", "prediction")


def sample_rows(scores: Mapping[str, Mapping[str, np.ndarray]], samples: Mapping[str, Mapping[str, Any]]
                ) -> tuple[list[str], list[list[Any]]]:
    """The per-sample table: header and rows (see :func:`write_samples`)."""
    columns = list(dict.fromkeys(c for cc in scores.values() for c in cc))
    header = [*SAMPLE_COLUMNS, *columns]
    rows: list[list[Any]] = []
    for s, cc in scores.items():
        info = samples.get(s, {})
        n = len(next(iter(cc.values()))) if cc else 0
        labels, preds, paths = info.get("labels"), info.get("predictions"), info.get("paths")
        for i in range(n):
            rows.append([s, i, "" if paths is None else paths[i],
                         "" if labels is None else int(labels[i]), "" if preds is None else int(preds[i]),
                         *(float(cc[c][i]) if c in cc else "" for c in columns)])
    return header, rows


def write_samples(path: str | Path, scores: Mapping[str, Mapping[str, np.ndarray]],
                  samples: Mapping[str, Mapping[str, Any]]) -> Path:
    """One row per image: data set, index, path (streamed sets, else empty), label (empty for OoD sets),
    predicted class, then one column per detector score. ``.parquet`` needs ``pyarrow``; anything else is CSV.
    Written atomically."""
    path = Path(path)
    header, rows = sample_rows(scores, samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ResultsError(f"{path}: writing Parquet needs pyarrow (pip install pyarrow), or name a .csv file") \
                from None
        table = pa.table({h: [r[j] if r[j] != "" else None for r in rows] for j, h in enumerate(header)})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        return path
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([repr(v) if isinstance(v, float) else v for v in r])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8", errors="surrogateescape"))
    return path


__all__ = ["SCHEMA", "BenchCell", "Metrics", "OodResult", "ResultsError", "ResultsFile", "ResultsRecord",
           "read_results", "record_of", "upgrade", "write_results", "write_samples", "write_scores"]
