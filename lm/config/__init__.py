"""Experiment configuration: the schema (torch-free) and the strict loader."""

from lm.config.schema import (  # noqa: F401
    PRESETS,
    SECTIONS,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    OptimizerConfig,
    ScheduleConfig,
    TokenizerConfig,
    TrainingConfig,
    field_docs,
    to_dict,
)
