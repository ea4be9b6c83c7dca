"""Training: the loop, pickle-free checkpoints and the saved model artifact."""

from .artifact import ArtifactError, load_weights, save_weights
from .checkpoint import load_checkpoint, save_checkpoint
from .config import SCHEDULES, TrainConfig
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
