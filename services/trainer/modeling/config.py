"""What a training run is made of: the backbones and `TrainConfig`, every choice of a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.trainer.settings import TrainerSettings, get_settings

CUSTOM = "custom"
EFFICIENTNET_LITE0 = "efficientnet_lite0"
BACKBONES = (CUSTOM, EFFICIENTNET_LITE0)
# Adam's step size by backbone: a network learning from scratch, or fine-tuning ImageNet weights
LEARNING_RATES = {CUSTOM: 2e-3, EFFICIENTNET_LITE0: 3e-4}


@dataclass
class TrainConfig:
    """Every choice of a training run; `asdict` of it goes into the run's params."""

    data_dir: str = "../shared/data/chest_xray"
    data_splits: tuple[str, ...] = ("train", "val")  # never "test": it is for independent checks
    out_dir: str | None = None
    epochs: int = 20
    batch_size: int = 32
    folds: int = 1
    ship: Literal["ensemble", "refit"] = "refit"
    seed: int = 0
    image_size: int = 224
    target_sensitivity: float = 0.95
    max_images: int | None = None
    validation_fraction: float = 0.15
    validation_strategy: Literal["lowest", "random"] = "lowest"
    width: int = 32
    dropout: float = 0.3
    learning_rate: float | None = None  # None: the backbone's own (LEARNING_RATES)
    label_smoothing: float = 0.05
    patience: int = 6
    augment: bool = True
    backbone: Literal["custom", "efficientnet_lite0"] = "efficientnet_lite0"  # BACKBONES
    frozen_blocks: int = 2  # pretrained backbone: the stem and this many first blocks stay fixed
    # pretrained backbone: films larger than this are shrunk to it inside the network (None: not)
    internal_size: int | None = 160
    equalize: bool = False  # histogram equalisation inside the model, before standardisation
    crop_area_min: float = 0.6  # random crops keep this share of the film's area or more
    erase_corners: float = 0.5  # probability that each corner is covered during training
    intensity_scale: float = 1.5  # widens the brightness, contrast and gamma ranges
    resample_min: float = 0.5  # each batch resampled to this share of its side or more (1: off)
    # Adam keeps an exponential moving average of the weights with this momentum and the network
    # ends with the average instead of one epoch's weights (None: off)
    ema_momentum: float | None = None
    # LP-FT: the head is first fitted alone, by a logistic regression on the pooled features of the
    # unaugmented training films, then the whole network is fine-tuned from there
    probe_head: bool = False
    # exported version folders whose mean class probabilities join the training targets
    teachers: tuple[str, ...] = ()
    distill_weight: float = 0.7  # the teachers' share of each training target (with teachers)
    baseline: bool = True
    cache_dir: str | None = None
    deterministic: bool = True
    verbose: int = 2

    def __post_init__(self) -> None:
        if self.learning_rate is None:
            self.learning_rate = LEARNING_RATES[self.backbone]
        if not 0.0 < self.resample_min <= 1.0:
            raise ValueError(f"resample_min must be in (0, 1], got {self.resample_min}")
        if self.ema_momentum is not None and not 0.0 < self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in (0, 1), got {self.ema_momentum}")

    @classmethod
    def from_settings(cls, settings: TrainerSettings | None = None, **overrides) -> TrainConfig:
        """Defaults from `TrainerSettings` (CXR_DATA_DIR, CXR_TARGET_SENSITIVITY, CXR_TRAIN_*)."""
        settings = settings or get_settings()
        values = {
            "data_dir": str(settings.data_path), "image_size": settings.image_size,
            "target_sensitivity": settings.target_sensitivity, "epochs": settings.train_epochs,
            "batch_size": settings.train_batch_size, "folds": settings.train_folds,
            "seed": settings.train_seed, "cache_dir": settings.train_image_cache_dir or None,
        }
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})
