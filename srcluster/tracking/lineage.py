"""Where a registered generator came from (`srcluster lineage`).

Lineage follows the `srcluster.pretrain_model` tag of each model version (pinned to a version when the stage started)
back to a model trained from scratch, then names the shard manifests (URI and sha256) each stage trained on:

    models:/demo-gan_4x/1 -> models:/demo-fidelity_4x/1 -> models:/demo-fidelity_2x/1 -> s3://.../manifest.json
"""

from __future__ import annotations

from typing import Any

from srcluster.errors import SrclusterError
from srcluster.tracking import tags as tag
from srcluster.tracking.models import get_version, parse_model_uri
from srcluster.tracking.tracker import Tracker

LOWER_IS_BETTER = ("lpips", "dists")


def _key_metric(tracker: Tracker, tags: dict[str, str], run_id: str | None) -> tuple[str | None, float | None]:
    """The metric that chose the registered checkpoint, from the version's tags, else the run's validation PSNR."""
    if tag.KEY_METRIC in tags:
        return tags[tag.KEY_METRIC], float(tags[tag.KEY_METRIC_VALUE])
    if not run_id:
        return None, None
    history = tracker.metric_history(run_id, "val_psnr")
    return ("val_psnr", max(v for _, v in history)) if history else (None, None)


def chain(tracker: Tracker, uri: str) -> list[dict[str, Any]]:
    """One entry per model, newest first: model URI, stage, run, key metric, pretrain and data tags."""
    name, version, alias = parse_model_uri(uri)
    found = get_version(tracker, name, version, alias)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    while True:
        model = f"models:/{found.name}/{found.version}"
        if model in seen:
            raise SrclusterError(f"lineage of {uri} loops back to {model}")
        seen.add(model)
        tags = dict(found.tags or {})
        metric, value = _key_metric(tracker, tags, found.run_id)
        out.append(
            {
                "model": model,
                "aliases": list(getattr(found, "aliases", []) or []),
                "stage": tags.get(tag.STAGE),
                "run_id": found.run_id,
                "metric": metric,
                "value": value,
                "pretrain": tags.get(tag.PRETRAIN, "unknown"),
                "pretrain_model": tags.get(tag.PRETRAIN_MODEL, "none"),
                "data_manifest": [u for u in tags.get(tag.DATA_MANIFEST, "").split(",") if u],
                "data_sha256": [d for d in tags.get(tag.DATA_SHA256, "").split(",") if d],
                "recipe_hash": tags.get(tag.RECIPE_HASH),
                "srcluster_version": tags.get(tag.VERSION),
                "git_commit": tags.get(tag.GIT_COMMIT),
                "ray_job_id": tags.get(tag.RAY_JOB_ID),
            }
        )
        upstream = tags.get(tag.PRETRAIN_MODEL, "none")
        if upstream == "none":
            return out
        up_name, up_version, up_alias = parse_model_uri(upstream)
        found = get_version(tracker, up_name, up_version, up_alias)


def format_chain(entries: list[dict[str, Any]]) -> str:
    lines = []
    for i, entry in enumerate(entries):
        arrow = "" if i == 0 else "  <- "
        aliases = f" @{',@'.join(entry['aliases'])}" if entry["aliases"] else ""
        metric = f"{entry['metric']} {entry['value']:.4f}" if entry["metric"] else "no validation metric"
        lines.append(
            f"{arrow}{entry['model']}{aliases}  stage {entry['stage'] or '?'}  run {entry['run_id']}  {metric}"
        )
    last = entries[-1]
    if last["pretrain"] not in ("scratch", "unknown", "none"):
        lines.append(f"  <- {last['pretrain']} (not a registered model)")
    used: dict[tuple[str, str], list[str]] = {}
    for entry in reversed(entries):
        for manifest, digest in zip(entry["data_manifest"], entry["data_sha256"], strict=False):
            used.setdefault((manifest, digest), []).append(entry["stage"] or entry["model"])
    for (manifest, digest), stages in used.items():
        pinned = f"sha256 {digest}" if digest != "none" else "image folder, no manifest"
        lines.append(f"  <- data {manifest}  {pinned}  (trained {', '.join(stages)})")
    if not used:
        lines.append("  <- data: not recorded (the model was not registered by a srcluster pipeline)")
    return "\n".join(lines)
