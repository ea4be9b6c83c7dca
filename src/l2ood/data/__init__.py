"""Data by name, images in memory or streamed, and the one place that chooses between them.

- :mod:`l2ood.data.registry`: the data sets l2ood knows by name (:data:`DATASETS`, plus the parametric
  ``npz:``, ``imagefolder:``, ``imglist:`` and ``wds:`` specs) and :func:`load_dataset`, which decodes one into
  an :class:`ImageSet` in memory;
- :mod:`l2ood.data.source`: the image-source protocol shared by sets in memory and streamed sets,
  :func:`~l2ood.data.source.open_images` (the one function that decides memory or stream) and
  :func:`load_source` (the images a recorded :class:`DataSource` describes);
- :mod:`l2ood.data.specs`: :func:`canonical_spec`, a spec with its paths made absolute.

The names below are re-exported here; the modules import each other only downward (no circles).
"""

from .errors import DataError, DataFormatError, DataNotFoundError
from .folders import load_image_folder, split_folder
from .imageset import DataSource, ImageSet, Op
from .imglist import load_imglist, parse_imglist_spec
from .npz import load_npz, save_npz
from .registry import DATASETS, PARAMETRIC, DatasetInfo, has_split, load_dataset
from .source import load_source
from .specs import canonical_spec
from .transforms import augment_batch, channel_stats, convert_format

__all__ = [
    "DATASETS",
    "PARAMETRIC",
    "DataError",
    "DataFormatError",
    "DataNotFoundError",
    "DataSource",
    "DatasetInfo",
    "ImageSet",
    "Op",
    "augment_batch",
    "canonical_spec",
    "channel_stats",
    "convert_format",
    "has_split",
    "load_dataset",
    "load_image_folder",
    "load_imglist",
    "load_npz",
    "load_source",
    "parse_imglist_spec",
    "save_npz",
    "split_folder",
]
