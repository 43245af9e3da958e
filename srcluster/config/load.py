"""Reading a job file: YAML safely, then traiNNer-redux compatibility, then the schema, with one line per mistake.

`load_job(path)` returns a `Job`; every mistake is reported as one line naming the file, the key path, the bad value
and (for typos) the closest known key: `job.yml: datasets.train.lq_siz: unknown key (did you mean 'lq_size'?)`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from srcluster.config.compat import lift_degradations, lift_ignored, value_warnings
from srcluster.config.schema import Job
from srcluster.errors import ConfigError, SrclusterError
from srcluster.registry import did_you_mean
from srcluster.storage import redact_url


def _known_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The field names allowed at `path` inside `model`, for "did you mean" hints."""
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        inner = _first_model(field.annotation)
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds union branch names ("list[str]", "function-after[...]") to locations; drop them.
    return tuple(p for p in loc if isinstance(p, int) or not re.search(r"[\[\]\-]", str(p)))


KNOWN_KEYS_SHOWN = 10  # an error is one line: a section with many keys is named by its first few


def _some(keys: list[str]) -> str:
    more = len(keys) - KNOWN_KEYS_SHOWN
    return ", ".join(keys[:KNOWN_KEYS_SHOWN]) + (f", ... ({more} more)" if more > 0 else "")


def describe_errors(exc: ValidationError, source: str) -> str:
    lines = []
    seen = set()
    for err in exc.errors():
        loc = _clean_loc(err["loc"])
        key = _dotted(loc)
        if key in seen:
            continue
        seen.add(key)
        if err["type"] == "extra_forbidden":
            known = _known_keys(Job, loc[:-1])
            close = did_you_mean(str(loc[-1]), known)
            hint = f" ({close})" if close else (f" (known keys: {_some(known)})" if known else "")
            lines.append(f"{source}: {key}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"{source}: {key}: required key is missing")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f", got {value!r}"
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {key + ': ' if key else ''}{message}{shown}")
    return "\n".join(lines)


def parse_job(data: Any, source: str = "job") -> Job:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of traiNNer-redux options at the top level, got {type(data).__name__}"
        )
    data, warnings = lift_ignored(data, source)
    data, _, more = lift_degradations(data, source)
    warnings += more
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source)) from None
    except SrclusterError as exc:  # a registry check inside a validator names the key, not the file
        raise ConfigError(f"{source}: {exc}") from None
    job._warnings = warnings + value_warnings(job, source)
    return job


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such job file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


def load_job(path: str | Path) -> Job:
    return parse_job(read_yaml(path), str(path))


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'losses': [{'type': 'l1loss'}]}} -> {'train.losses.0.type': 'l1loss'} (MLflow's key alphabet)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}.{i}"))
    else:
        out[prefix] = redact_url(data) if isinstance(data, str) else data
    return out


def job_params(job: Job) -> dict[str, Any]:
    """The job's resolved config, flattened to dotted keys for MLflow params (URL passwords masked)."""
    return flatten(job.model_dump(mode="json"))
