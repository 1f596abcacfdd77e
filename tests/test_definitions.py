"""The whole Dagster code location: loads from policies/, fails whole on a bad policy file."""

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from assets.policy_assets import touched_tables
from assets.schedules import JOB
from retention_jobs.definitions import build_definitions
from retention_jobs.errors import ConfigError, PolicyError
from retention_jobs.load import load_policies, load_text

ROOT = Path(__file__).resolve().parent.parent
DAGSTER = Path(sys.executable).parent / "dagster"
CHECK_NAMES = {
    "nothing_expired_left",
    "held_rows_unchanged",
    "no_original_values",
    "audit_recorded",
    "erasure_verified",
}

BROKEN = """\
purpose: broken
title: A policy with a typo
legal_basis: consent
owner: marketing
rules:
  - name: unsubscribed
    table: marketing.newsletter_subscribers
    key: id
    clock: unsubscribed_at
    keep_for: P5X
    action: delete
"""
BROKEN_AT = "10:5"  # the keep_for key

RELATED = """\
purpose: contacts
title: CRM contacts
legal_basis: legitimate_interests
owner: sales@example.com
rules:
  - name: idle
    table: crm.contacts
    key: id
    clock: {table: crm.activities, on: contact_id, column: happened_at}
    keep_for: P2Y
    related:
      - {table: crm.consents, on: contact_id, none: {kind: marketing}}
    action: delete
    cascade:
      - table: crm.notes
        on: contact_id
        action: delete
        cascade:
          - {table: crm.note_files, on: note_id, action: delete}
"""


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from retention_jobs.definitions import defs

    return defs


def test_the_code_location_loads_one_asset_per_policy(defs):
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    policies = load_policies([ROOT / "policies"])
    keys = repo.asset_graph.get_all_asset_keys()
    assert {k for k in keys if k.path[0] == "retention"} == {
        dg.AssetKey(["retention", f.policy.purpose]) for f in policies.files
    }
    tables = {t for f in policies.files for t in touched_tables(f.policy)}
    assert {k for k in keys if k.path[0] == "source"} == {
        dg.AssetKey(["source", *t.split(".")]) for t in tables
    }
    assert repo.get_job(JOB) is not None
    assert sorted(s.name for s in repo.schedule_defs) == [
        f"{JOB}_schedule",
        "request_deadlines_daily",
    ]
    assert [s.name for s in repo.sensor_defs] == ["request_sensor"]
    assert dg.AssetKey(["requests", "data_subject_requests"]) in keys
    for f in policies.files:
        node = repo.asset_graph.get(dg.AssetKey(["retention", f.policy.purpose]))
        assert node.group_name == "retention"
        assert node.kinds == {"duckdb", "polars"}
        assert all(o.startswith("team:") or "@" in o for o in node.owners)
        assert f.policy.title in node.description
        assert {dg.AssetKey(["source", *t.split(".")]) for t in touched_tables(f.policy)} == set(
            node.parent_keys
        )
        assert {c.name for c in node.check_keys} == CHECK_NAMES
        assert node.partitions_def is not None


def test_asset_attributes_come_from_the_policy(tmp_path):
    (tmp_path / "contacts.yaml").write_text(RELATED)
    (tmp_path / "newsletter.yaml").write_text(
        BROKEN.replace("P5X", "P0D")
        .replace("broken", "newsletter")
        .replace("owner: marketing", "owner: customer operations")
    )
    repo = build_definitions(tmp_path).get_repository_def()
    contacts = repo.asset_graph.get(dg.AssetKey(["retention", "contacts"]))
    assert contacts.owners == ["sales@example.com"]
    assert "CRM contacts" in contacts.description and "legitimate interests" in contacts.description
    assert {k.to_user_string() for k in contacts.parent_keys} == {
        "source/crm/contacts",
        "source/crm/activities",
        "source/crm/consents",
        "source/crm/notes",
        "source/crm/note_files",
    }
    newsletter = repo.asset_graph.get(dg.AssetKey(["retention", "newsletter"]))
    assert newsletter.owners == ["team:customer-operations"]


def test_touched_tables_covers_clocks_filters_and_nested_cascades():
    policy = load_text(RELATED, "contacts.yaml").policy
    assert touched_tables(policy) == [
        "crm.contacts",
        "crm.notes",
        "crm.note_files",
        "crm.activities",
        "crm.consents",
    ]


def test_a_broken_policy_fails_the_whole_location_with_its_location(tmp_path, monkeypatch):
    (tmp_path / "good.yaml").write_text(RELATED)
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    monkeypatch.setenv("RETENTION_POLICIES", str(tmp_path))
    with pytest.raises(PolicyError) as info:
        build_definitions()
    assert f"{bad}:{BROKEN_AT}: rules[0].keep_for:" in str(info.value)


def test_dagster_refuses_to_load_the_location_and_shows_the_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    env = {**os.environ, "RETENTION_POLICIES": str(tmp_path), "DAGSTER_HOME": str(tmp_path)}
    out = subprocess.run(
        [str(DAGSTER), "definitions", "validate", "-m", "retention_jobs.definitions"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert f"{bad}:{BROKEN_AT}" in out.stdout + out.stderr


def test_partitions_are_days_in_oslo_up_to_today(defs):
    node = defs.get_repository_def().asset_graph.get(dg.AssetKey(["retention", "newsletter"]))
    partitions = node.partitions_def
    assert isinstance(partitions, dg.DailyPartitionsDefinition)
    assert partitions.timezone == "Europe/Oslo"
    assert partitions.get_first_partition_key() == "2024-01-01"
    assert (
        partitions.get_last_partition_key()
        == datetime.now(ZoneInfo("Europe/Oslo")).date().isoformat()
    )


@pytest.mark.parametrize(
    ("tick", "expected"),
    [
        (datetime(2026, 3, 5, 2, 30, tzinfo=ZoneInfo("Europe/Oslo")), "2026-03-04"),
        # 00:30 in Oslo is still the previous day in UTC: the partition follows Oslo
        (datetime(2026, 3, 4, 23, 30, tzinfo=UTC), "2026-03-04"),
        (datetime(2026, 3, 29, 2, 30, tzinfo=ZoneInfo("Europe/Oslo")), "2026-03-28"),  # DST starts
    ],
)
def test_the_nightly_schedule_runs_yesterday_in_oslo(defs, tick, expected):
    schedule = defs.resolve_schedule_def(f"{JOB}_schedule")
    assert schedule.cron_schedule == "30 2 * * *"
    assert schedule.execution_timezone == "Europe/Oslo"
    assert schedule.job_name == JOB
    context = dg.build_schedule_context(
        scheduled_execution_time=tick, repository_def=defs.get_repository_def()
    )
    data = schedule.evaluate_tick(context)
    (request,) = data.run_requests
    assert request.partition_key == expected


def test_cron_and_zone_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("RETENTION_SCHEDULE_CRON", "15 4 * * *")
    monkeypatch.setenv("RETENTION_SCHEDULE_TIMEZONE", "Europe/Stockholm")
    schedule = build_definitions().resolve_schedule_def(f"{JOB}_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == (
        "15 4 * * *",
        "Europe/Stockholm",
    )


def test_the_nightly_job_covers_every_policy_and_is_tagged_for_the_store_limit(defs):
    job = defs.resolve_job_def(JOB)
    policy_keys = {
        k
        for k in defs.get_repository_def().asset_graph.get_all_asset_keys()
        if k.path[0] == "retention"
    }
    assert job.asset_layer.selected_asset_keys == policy_keys
    assert job.tags["retention/store"]


PG_URL = "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test"  # port 1: nothing listens


def _no_connections(monkeypatch):
    """Building the location must not open the store: fail loudly if anything tries."""
    import psycopg
    import sqlalchemy

    import assets.resources
    import retention_jobs.store

    def refuse(*args, **kwargs):
        raise AssertionError("building the definitions opened a connection")

    monkeypatch.setattr(sqlalchemy, "create_engine", refuse)
    monkeypatch.setattr(psycopg, "connect", refuse)
    monkeypatch.setattr(retention_jobs.store, "open_store", refuse)
    monkeypatch.setattr(assets.resources, "open_store", refuse)


def test_the_executor_is_in_process_by_default(monkeypatch):
    monkeypatch.delenv("RETENTION_EXECUTOR", raising=False)
    monkeypatch.delenv("RETENTION_STORE", raising=False)
    assert build_definitions().resolve_job_def(JOB).executor_def is dg.in_process_executor


@pytest.mark.parametrize("value", ["multiprocess", " MultiProcess\n"])
def test_multiprocess_runs_on_a_sql_store_without_connecting_to_it(monkeypatch, value):
    _no_connections(monkeypatch)
    monkeypatch.setenv("RETENTION_EXECUTOR", value)
    monkeypatch.setenv("RETENTION_STORE", PG_URL)
    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def(JOB).executor_def is dg.multiprocess_executor
    assert defs.resolve_job_def(JOB).executor_def is not dg.in_process_executor


@pytest.mark.parametrize(
    "store", [None, "/data/warehouse.duckdb", "duckdb:///data/warehouse.duckdb"]
)
def test_a_parallel_executor_is_refused_on_a_duckdb_store(monkeypatch, store):
    monkeypatch.setenv("RETENTION_EXECUTOR", "multiprocess")
    if store is None:
        monkeypatch.delenv("RETENTION_STORE", raising=False)
    else:
        monkeypatch.setenv("RETENTION_STORE", store)
    with pytest.raises(ConfigError) as info:
        build_definitions()
    message = str(info.value)
    assert "RETENTION_EXECUTOR=multiprocess" in message
    assert "DuckDB" in message and "one writer process" in message
    assert "RETENTION_STORE" in message


def test_an_unknown_executor_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv("RETENTION_EXECUTOR", "threads")
    monkeypatch.setenv("RETENTION_STORE", PG_URL)
    with pytest.raises(ConfigError) as info:
        build_definitions()
    message = str(info.value)
    assert "RETENTION_EXECUTOR='threads'" in message
    assert "in_process, multiprocess, k8s, celery" in message


@pytest.mark.parametrize(
    ("value", "module", "package"),
    [
        ("k8s", "dagster_k8s", "dagster-k8s"),
        ("celery", "dagster_celery", "dagster-celery"),
    ],
)
def test_k8s_and_celery_without_their_package_name_what_to_install(
    monkeypatch, value, module, package
):
    monkeypatch.setitem(sys.modules, module, None)  # not importable, installed or not
    monkeypatch.setenv("RETENTION_EXECUTOR", value.upper())
    monkeypatch.setenv("RETENTION_STORE", PG_URL)
    with pytest.raises(ConfigError) as info:
        build_definitions()
    message = str(info.value)
    assert f"RETENTION_EXECUTOR={value}" in message
    assert f"pip install {package}" in message
    assert info.value.__cause__ is None


def test_the_shipped_multiprocess_run_config_is_valid_for_the_real_job(monkeypatch):
    """deploy/local/run-config-multiprocess.yaml, as an operator would pass it, against the
    nightly job built with RETENTION_EXECUTOR=multiprocess (not against a schema copy)."""
    import yaml

    monkeypatch.setenv("RETENTION_EXECUTOR", "multiprocess")
    monkeypatch.setenv("RETENTION_STORE", PG_URL)
    job = build_definitions().resolve_job_def(JOB)
    config = yaml.safe_load(
        (Path(__file__).parent.parent / "deploy/local/run-config-multiprocess.yaml").read_text()
    )
    assert config["execution"]["config"]["max_concurrent"] == 4
    result = dg.validate_run_config(job, config)
    assert (
        result["execution"]["multiprocess"]["max_concurrent"] == 4
    )  # the resolved executor config
    # the old shape (settings under `multiprocess:`) belongs to Dagster's default executor, not this one
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(
            job, {"execution": {"config": {"multiprocess": {"max_concurrent": 4}}}}
        )


def test_deploy_validate_script_passes():
    out = subprocess.run(
        [sys.executable, "deploy/validate.py"],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (
        "local/run-config-multiprocess.yaml       valid against dagster.multiprocess_executor"
        in out.stdout
    )
