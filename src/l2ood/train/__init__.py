"""Training: the loop, pickle-free checkpoints and the saved model artifact.

:class:`TrainConfig` lives beside :class:`~l2ood.models.ModelConfig` in :mod:`l2ood.models.config` (the run record
holds both) and is exported here too.
"""

from ..models.config import SCHEDULES, TrainConfig
from .artifact import ArtifactError, load_weights, save_weights
from .checkpoint import load_checkpoint, save_checkpoint
from .trainer import TrainingDiverged, TrainResult, lr_at, train

__all__ = [
           "SCHEDULES",
           "ArtifactError",
           "TrainConfig",
           "TrainResult",
           "TrainingDiverged",
           "load_checkpoint",
           "load_weights",
           "lr_at",
           "save_checkpoint",
           "save_weights",
           "train",
]
