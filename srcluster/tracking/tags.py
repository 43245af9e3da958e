"""Every MLflow tag srcluster writes, in one place: the lineage schema of runs and model versions.

Runs carry what made them (stage, recipe, pretrain, data, code) and what they left (checkpoint, generator, best);
model versions copy a run's lineage tags (all but `RUN_ONLY`) so `srcluster lineage` can walk a model back to its data.
Spell a tag only through these names; `tests/unit/test_tracking_tags.py` checks that no module spells one by hand.
"""

from __future__ import annotations

PREFIX = "srcluster."

# --- what made a run ----------------------------------------------------------------------------------------------
VERSION = "srcluster.version"  # srcluster's package version
GIT_COMMIT = "srcluster.git_commit"  # the commit of the working tree the driver ran in, when it is a git checkout
RAY_JOB_ID = "srcluster.ray_job_id"  # the Ray job (`ray job submit`, `srcluster submit`) that ran it
KIND = "srcluster.kind"  # pipeline | tune | tune-trial (stage runs carry STAGE instead)
STAGE = "srcluster.stage"  # the job name (a recipe's stage name inside a pipeline)
RUN_KEY = "srcluster.run_key"  # what a rerun finds its earlier run by (train/stage.py: run_key)
IDENTITY = "srcluster.identity"  # what the run key hashes (JSON), so a rerun with a changed model can say what changed
TOTAL_ITER = "srcluster.total_iter"  # the train.total_iter the run last trained to (a higher one continues the run)
CONTINUED = "srcluster.continued"  # the training options the latest rerun changed before continuing from a checkpoint
RECIPE = "srcluster.recipe"
RECIPE_HASH = "srcluster.recipe_hash"
PRETRAIN = "srcluster.pretrain"  # the pretrain as configured (a path, URL or models:/ URI), or "scratch"
PRETRAIN_MODEL = "srcluster.pretrain_model"  # models:/NAME/VERSION the pretrain resolved to
PRETRAIN_RUN_ID = "srcluster.pretrain_run_id"  # the run that trained the pretrain
DATA_MANIFEST = "srcluster.data_manifest"  # the training shard set's manifest URL
DATA_SHA256 = "srcluster.data_sha256"  # and its sha256
PARENT_RUN_ID = "srcluster.parent_run_id"  # a model version's pipeline run

# --- what a run left ---------------------------------------------------------------------------------------------
CHECKPOINT_URI = "srcluster.checkpoint_uri"  # the final checkpoint folder (training state + generator)
GENERATOR_URI = "srcluster.generator_uri"  # the generator passed downstream: the best by validation, else the final one
ITERATIONS = "srcluster.iterations"
BEST_METRIC = "srcluster.best_metric"
BEST_VALUE = "srcluster.best_value"
BEST_ITERATION = "srcluster.best_iteration"
REGISTERED_MODEL = "srcluster.registered_model"  # models:/NAME/VERSION registered from this run

# --- model versions ----------------------------------------------------------------------------------------------
KEY_METRIC = "srcluster.key_metric"
KEY_METRIC_VALUE = "srcluster.key_metric_value"
KEY_METRIC_ITERATION = "srcluster.key_metric_iteration"
ARCH = "srcluster.arch"
ARCH_OPTIONS = "srcluster.arch_options"
SCALE = "srcluster.scale"
GENERATOR = "srcluster.generator"  # the generator file a version was logged from

# --- searches (srcluster tune) -----------------------------------------------------------------------------------
TUNE_KEY = "srcluster.tune.key"  # what a rerun of a search finds its parent run by
TUNE_TRIAL_ID = "srcluster.tune.trial_id"
TUNE_SEARCH_RUN = "srcluster.tune.search_run"
TUNE_STOPPED_EARLY = "srcluster.tune.stopped_early"
TUNE_BEST_TRIAL = "srcluster.tune.best_trial"
TUNE_BEST_RUN = "srcluster.tune.best_run"

# run tags that describe one run, not the model a version holds: not copied onto model versions
RUN_ONLY = (RUN_KEY, IDENTITY, TOTAL_ITER, CONTINUED, CHECKPOINT_URI, REGISTERED_MODEL)


def resized(iteration: int) -> str:
    """An elastic run's worker-count change at `iteration` (value: old -> new workers and the batch plan)."""
    return f"srcluster.resize.{iteration}"


def reused(stage: str) -> str:
    """On a pipeline's parent run: the finished stage run a rerun reused."""
    return f"srcluster.reused.{stage}"


def alias_note(alias: str, key: str) -> str:
    """On a model version: who/when/why an alias was pointed at it (`srcluster promote`)."""
    return f"srcluster.alias.{alias}.{key}"


def tune_objective(metric: str) -> str:
    """On a search's parent run: the best trial's value of the objective."""
    return f"srcluster.tune.{metric}"
