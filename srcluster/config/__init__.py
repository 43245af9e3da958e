"""The job file: traiNNer-redux's option names, validated, plus one `srcluster:` section for the cluster settings.

A job is one training stage. `load_job(path)` reads YAML safely, validates it and returns a `Job`. By concern:
`schema` (the pydantic models), `compat` (traiNNer-redux options accepted without effect, each with a warning) and
`load` (reading, and the one-line error messages). Importing this package does not import torch.
"""

from srcluster.config.compat import IGNORED, TRAINNER_LOSSES, lift_degradations, lift_ignored, value_warnings
from srcluster.config.load import describe_errors, flatten, job_params, load_job, parse_job, read_yaml
from srcluster.config.schema import (
    NOT_READ,
    Checkpoints,
    Cluster,
    Component,
    Datasets,
    Job,
    Logger,
    Loss,
    Metric,
    MlflowOptions,
    Network,
    Open,
    Optimizer,
    Paths,
    Plateau,
    Scheduler,
    Strict,
    TrainDataset,
    TrainOptions,
    ValDataset,
    ValOptions,
)
from srcluster.errors import ConfigError

__all__ = [
    "IGNORED",
    "NOT_READ",
    "TRAINNER_LOSSES",
    "Checkpoints",
    "Cluster",
    "Component",
    "ConfigError",
    "Datasets",
    "Job",
    "Logger",
    "Loss",
    "Metric",
    "MlflowOptions",
    "Network",
    "Open",
    "Optimizer",
    "Paths",
    "Plateau",
    "Scheduler",
    "Strict",
    "TrainDataset",
    "TrainOptions",
    "ValDataset",
    "ValOptions",
    "describe_errors",
    "flatten",
    "job_params",
    "lift_degradations",
    "lift_ignored",
    "load_job",
    "parse_job",
    "read_yaml",
    "value_warnings",
]
