# srcluster tasks. Run `just` to list them. Recipes assume the package is installed (see README).
set shell := ["bash", "-euo", "pipefail", "-c"]

default:
    @just --list

# the three-stage recipe at toy size on the local stack (starts it if needed)
demo:
    srcluster demo

# static checks: layers (import-linter), lint and format (ruff), types (basedpyright); settings in pyproject.toml
lint:
    lint-imports
    ruff check .
    ruff format --check .
    basedpyright

# the static checks, then the whole test suite (starts its own S3, MLflow and Ray on free ports)
test *ARGS: lint
    python -m pytest {{ARGS}}

# start the local SeaweedFS S3 + MLflow servers on 127.0.0.1
stack-up:
    srcluster stack up

# stop exactly what stack-up started
stack-down:
    srcluster stack down

stack-status:
    srcluster stack status

# every benchmark under bench/, one JSON line each
bench:
    for f in bench/*.py; do grep -q '__main__' "$f" || continue; echo "== $f" >&2; python "$f"; done
