"""Training: the loop, pickle-free checkpoints and the saved model artifact."""

from .artifact import ArtifactError, load_artifact, save_artifact
from .checkpoint import load_checkpoint, save_checkpoint
from .trainer import TrainConfig, TrainingDiverged, TrainResult, lr_at, train

__all__ = ["ArtifactError", "TrainConfig", "TrainResult", "TrainingDiverged", "load_artifact",
           "load_checkpoint", "lr_at", "save_artifact", "save_checkpoint", "train"]
