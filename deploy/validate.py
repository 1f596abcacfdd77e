"""Check the example deployment configs: every YAML file parses, and where Dagster's own
config schemas are importable, they are validated against them.

    uv run python deploy/validate.py                     # parses; validates what the project's dagster knows
    /path/to/venv-with-dagster-k8s-and-celery/bin/python deploy/validate.py   # validates all

- `execution.config` of each run config against its executor's schema (multiprocess: in
  dagster; k8s_job_executor: dagster-k8s; celery_executor: dagster-celery);
- `deploy/celery/dagster.yaml` against Dagster's instance schema, and its run coordinator's
  and run launcher's own config schemas;
- the Helm values file is parsed only (the chart's values schema lives in the chart).
Exit 1 on a problem; a schema whose package is missing is reported as skipped.
"""

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
EXECUTORS = {
    "local/run-config-multiprocess.yaml": ("dagster", "multiprocess_executor", None),
    "k8s/run-config.yaml": ("dagster_k8s", "k8s_job_executor", None),
    "celery/run-config.yaml": ("dagster_celery", "celery_executor", None),
}


def validate_executor(path: str, doc: dict) -> str:
    module, name, wrapper = EXECUTORS[path]
    try:
        executor = getattr(__import__(module), name)
    except ImportError:
        return f"skipped: {module} not installed"
    from dagster._config import process_config, resolve_to_config_type

    config = doc["execution"]["config"]
    if wrapper:
        config = config[wrapper]
    config_type = resolve_to_config_type(executor.config_schema.as_field().config_type)
    result = process_config(config_type, config)
    if not result.success:
        raise ValueError("; ".join(e.message for e in result.errors))
    return f"valid against {module}.{name}"


def validate_instance(path: Path) -> str:
    try:
        from dagster._core.instance.config import dagster_instance_config
    except ImportError:
        return "skipped: dagster not installed"
    import importlib

    from dagster._config import process_config, resolve_to_config_type

    config, _ = dagster_instance_config(str(path.parent), path.name)  # raises on a schema error
    checked = []
    for section in ("run_coordinator", "run_launcher"):
        spec = config.get(section)
        if not spec:
            continue
        module = spec["module"].replace("dagster.core.", "dagster._core.")
        cls = getattr(importlib.import_module(module), spec["class"])
        result = process_config(resolve_to_config_type(cls.config_type()), spec.get("config") or {})
        if not result.success:
            raise ValueError(f"{section}: " + "; ".join(e.message for e in result.errors))
        checked.append(spec["class"])
    return "valid against Dagster's instance schema" + (
        f" and {', '.join(checked)}" if checked else ""
    )


def env_names(node) -> set[str]:
    """Names in `{env: NAME}` values: validation fills unset ones with a placeholder."""
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            return {node["env"]}
        return set().union(*(env_names(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(env_names(v) for v in node)) if node else set()
    return set()


def main() -> int:
    import os

    failed = False
    for f in sorted(HERE.rglob("*.yaml")):
        rel = f.relative_to(HERE).as_posix()
        try:
            doc = yaml.safe_load(f.read_text())
            for name in env_names(doc):
                os.environ.setdefault(name, "placeholder-for-validation")
            if rel in EXECUTORS:
                status = validate_executor(rel, doc)
            elif f.name == "dagster.yaml":
                status = validate_instance(f)
            else:
                status = "parsed (no schema available here)"
        except Exception as e:  # noqa: BLE001 - report every file
            failed = True
            status = f"INVALID: {type(e).__name__}: {e}"
        print(f"{rel:40s} {status}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
