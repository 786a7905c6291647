"""Training: configuration, presets, the loop, checkpoints, logging, evaluation and the demo."""
from fairalign.config import Config, build_config
from fairalign.config.presets import PRESETS
from fairalign.errors import ConfigError

__all__ = ["Config", "ConfigError", "build_config", "PRESETS"]
