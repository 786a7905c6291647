"""Training: configuration, presets, the loop, checkpoints, logging, evaluation and the demo."""
from fairalign.train.config import Config, ConfigError, build_config
from fairalign.train.presets import PRESETS

__all__ = ["Config", "ConfigError", "build_config", "PRESETS"]
