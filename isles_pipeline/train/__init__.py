"""Training segmentation networks whose TorchScript checkpoints the network segmenter runs."""

from isles_pipeline.train.training import (
    TrainConfig,
    TrainingCase,
    TrainResult,
    save_loss_plot,
    train_segmenter,
)

__all__ = ["TrainConfig", "TrainResult", "TrainingCase", "save_loss_plot", "train_segmenter"]
