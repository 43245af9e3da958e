"""The community's three-stage recipe as one pipeline: 2x fidelity -> 4x fidelity -> 4x GAN.

A recipe file is a job config (traiNNer-redux keys) shared by all stages, plus a `stages:` mapping of per-stage
overrides. Each stage's job is derived from the shared part by the rules below, then the stage's overrides are merged on
top (deep merge; lists are replaced), so every rule can be overridden per stage.

    fidelity_2x  scale 2, LR = bicubic, Charbonnier only, AdamW lr 2e-4, from scratch
    fidelity_4x  scale 4, pretrain = fidelity_2x's EMA generator with strict_load_g: false (all but the upsampler
                 carries over), lr 1e-4, total_iter and milestones halved
    gan_4x       scale 4, pretrain = fidelity_4x's generator with strict_load_g: true, lr 1e-4 for G and D,
                 a U-Net discriminator, MS-SSIM + perceptual + HSLuv + GAN losses with traiNNer-redux's template
                 weights (the perceptual loss reads VGG19 weights from local disk; a recipe without them overrides
                 `train.losses` for this stage, as the demo does)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srcluster.config import ConfigError, Job, parse_job, read_yaml

STAGES = ("fidelity_2x", "fidelity_4x", "gan_4x")

# traiNNer-redux's GAN templates: MS-SSIM + perceptual (VGG19) + HSLuv + GAN, with their weights
GAN_LOSSES = [
    {"type": "mssimloss", "loss_weight": 0.5},
    {"type": "perceptualloss", "criterion": "charbonnier", "loss_weight": 0.01},
    {"type": "hsluvloss", "criterion": "charbonnier", "loss_weight": 1.0},
    {"type": "ganloss", "gan_type": "vanilla", "loss_weight": 0.1},
]


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _halve(values: list[int]) -> list[int]:
    return [max(1, v // 2) for v in values]


def derive(shared: dict, stage: str) -> dict:
    """The job dict of `stage` before its overrides, by the rules in this module's docstring."""
    job = copy.deepcopy(shared)
    train = job.setdefault("train", {})
    optim_g = train.setdefault("optim_g", {})
    if stage == "fidelity_2x":
        job["scale"] = 2
        train["losses"] = [{"type": "charbonnierloss", "loss_weight": 1.0}]
        optim_g.update(type="AdamW", lr=2e-4)
        job.setdefault("path", {}).pop("pretrain_network_g", None)
        job.pop("network_d", None)
    elif stage == "fidelity_4x":
        job["scale"] = 4
        train["losses"] = [{"type": "charbonnierloss", "loss_weight": 1.0}]
        optim_g.update(lr=1e-4)
        train["total_iter"] = max(1, int(train.get("total_iter", 2)) // 2)
        scheduler = train.setdefault("scheduler", {})
        scheduler["milestones"] = _halve(scheduler.get("milestones", []))
        job.setdefault("path", {})["strict_load_g"] = False
        job.pop("network_d", None)
    elif stage == "gan_4x":
        job["scale"] = 4
        train["losses"] = copy.deepcopy(GAN_LOSSES)
        optim_g.update(lr=1e-4)
        train["optim_d"] = {**optim_g, "lr": 1e-4}
        train["total_iter"] = max(1, int(train.get("total_iter", 2)) // 2)
        scheduler = train.setdefault("scheduler", {})
        scheduler["milestones"] = _halve(scheduler.get("milestones", []))
        job.setdefault("network_d", {"type": "unetdiscriminatorsn"})
        job.setdefault("path", {})["strict_load_g"] = True
    else:
        raise ConfigError(f"stages.{stage}: unknown stage (known: {', '.join(STAGES)})")
    return job


@dataclass
class Recipe:
    name: str
    source: str
    stages: dict[str, dict]  # stage -> job dict (pretrain left open for chaining)

    def job(self, stage: str, pretrain: str | None = None) -> Job:
        data = copy.deepcopy(self.stages[stage])
        if pretrain:
            data.setdefault("path", {})["pretrain_network_g"] = pretrain
        data["name"] = f"{self.name}-{stage}"
        # every stage of a recipe lands in the recipe's experiment, beside its parent run
        data.setdefault("srcluster", {}).setdefault("mlflow", {}).setdefault("experiment", self.name)
        return parse_job(data, f"{self.source} (stage {stage})")


def load_recipe(path: str | Path) -> Recipe:
    data = read_yaml(path)
    return parse_recipe(data, str(path))


def parse_recipe(data: Any, source: str) -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a `stages:` section")
    data = copy.deepcopy(data)
    overrides = data.pop("stages", None) or {name: {} for name in STAGES}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: stages: expected a mapping of stage name -> overrides")
    for stage in overrides:
        if stage not in STAGES:
            raise ConfigError(f"{source}: stages.{stage}: unknown stage (known: {', '.join(STAGES)})")
    name = str(data.get("name") or Path(source).stem)
    data.setdefault("name", name)
    stages = {stage: deep_merge(derive(data, stage), overrides.get(stage) or {}) for stage in STAGES if stage in overrides}
    recipe = Recipe(name, source, stages)
    for stage in stages:  # validate every stage now, not after hours of training the first one
        recipe.job(stage, pretrain="pending://previous-stage" if stage != STAGES[0] else None)
    return recipe


@dataclass
class StageSummary:
    stage: str
    iterations: int
    psnr: float | None
    checkpoint_uri: str
    run_id: str


def run_recipe(recipe: Recipe, *, on_stage_done=None, fresh: bool = False) -> list[StageSummary]:
    """Run the stages in order, each initialised from the previous stage's EMA generator.

    A rerun skips stages that finished (found in MLflow by their config) and resumes the interrupted one."""
    from srcluster.train.stage import run_stage
    from srcluster.track import Tracker

    first_job = recipe.job(next(iter(recipe.stages)))
    tracker = Tracker(first_job.srcluster.mlflow.tracking_uri)
    parent = tracker.start_run(first_job.srcluster.mlflow.experiment or recipe.name, f"{recipe.name}-pipeline",
                               tags={"srcluster.recipe": recipe.name, "srcluster.kind": "pipeline"})
    summaries, pretrain = [], None
    try:
        for stage in recipe.stages:
            job = recipe.job(stage, pretrain)
            result = run_stage(job, run_name=stage, parent_run_id=parent, fresh=fresh,
                               tags={"srcluster.recipe": recipe.name, "srcluster.stage": stage,
                                     "srcluster.pretrain": pretrain or "scratch"})
            pretrain = result.generator_uri
            if result.reused:
                tracker.set_tags(parent, {f"srcluster.reused.{stage}": result.run_id})
            summary = StageSummary(stage, result.iterations, result.metrics.get("val_psnr"), result.checkpoint_uri,
                                   result.run_id)
            summaries.append(summary)
            if on_stage_done:
                on_stage_done(summary, result)
    except BaseException:
        tracker.end_run(parent, "FAILED")
        raise
    tracker.end_run(parent)
    return summaries
