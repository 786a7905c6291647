"""The run configuration: schema.py (the dataclasses, a doc per field), load.py (YAML + dotted KEY=VALUE),
validate.py, docs.py (`fairalign config --keys`), methods.py (config -> policy loss and estimator),
presets.py (named configs) and task.py (config -> the task it names)."""
from fairalign.config.docs import field_docs
from fairalign.config.load import (
                                     build_config,
                                     dump_yaml,
                                     load_yaml,
                                     nest,
                                     parse_override,
                                     to_dict,
)
from fairalign.config.schema import (
                                     AlgoConfig,
                                     Config,
                                     EvalConfig,
                                     LogConfig,
                                     LoraConfig,
                                     OptimConfig,
                                     RolloutConfig,
                                     SFTConfig,
)
from fairalign.config.validate import validate

__all__ = ["Config", "AlgoConfig", "RolloutConfig", "OptimConfig", "LoraConfig", "SFTConfig", "EvalConfig",
           "LogConfig", "build_config", "load_yaml", "dump_yaml", "to_dict", "parse_override", "nest", "validate",
           "field_docs"]
