"""G6: no personal value reaches stdout, stderr, the exception, the ledger or the runs table when
the database refuses a change. Rows carry marker values; every refusal a run can meet (CHECK,
UNIQUE, NOT NULL, a foreign key, a trigger that quotes the row, a missing privilege) is forced,
through the CLI (a subprocess) and in process, on PostgreSQL and on DuckDB."""

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from stores import pg_database

from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.errors import StoreRejected
from retention_jobs.load import load_policies
from retention_jobs.store import open_store

AS_OF = "2026-11-22"
KEY = "leak-test-key-0123456789abcdef"
MARK = "LEAKMARK"

PEOPLE = """
CREATE TABLE p.people (
    id BIGINT PRIMARY KEY,
    name TEXT,
    email TEXT,
    nid TEXT,
    phone TEXT,
    closed_at DATE
)
"""
ROWS = [
    (
        i,
        f"{MARK}-name-{i}",
        f"{MARK.lower()}-{i}@mail.example",
        f"{MARK}-NID-{i:04d}",
        f"+47-{MARK}-PHONE-000000{i}",
        "2015-01-01",
    )
    for i in range(1, 5)
]


def policy(action: str) -> str:
    return f"""
purpose: people
title: People
legal_basis: contract
owner: ops
rules:
  - name: closed
    table: p.people
    key: id
    subject: {{kind: person, column: id}}
    clock: closed_at
    keep_for: P1Y
    {action}
"""


ANON_PHONE = "action: anonymise\n    columns: {phone: {constant: '000'}}"
ANON_EMAIL = "action: anonymise\n    columns: {email: {constant: anon@example.invalid}}"
ANON_NID = "action: anonymise\n    columns: {nid: hash}"
DELETE = "action: delete"

# (scenario, extra DDL (PostgreSQL), the rule's action, what the message must name)
PG_CASES = [
    (
        "check",
        ["ALTER TABLE p.people ADD CONSTRAINT phone_long CHECK (length(phone) > 20)"],
        ANON_PHONE,
        ["CheckViolation", "23514", "p.people", "phone_long"],
    ),
    (
        "unique",
        [  # two people of one name: the constant e-mail makes their keys equal
            f"UPDATE p.people SET name = '{MARK}-shared-name'",
            "ALTER TABLE p.people ADD CONSTRAINT email_unique UNIQUE (email, name)",
        ],
        ANON_EMAIL,
        ["UniqueViolation", "23505", "p.people", "email_unique"],
    ),
    (
        "not-null",  # an application's trigger that blanks a NOT NULL column the rule keeps
        [
            "ALTER TABLE p.people ALTER COLUMN name SET NOT NULL",
            "CREATE FUNCTION p.blank() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN NEW.name := NULL; RETURN NEW; END$$",
            "CREATE TRIGGER blank BEFORE UPDATE ON p.people "
            "FOR EACH ROW EXECUTE FUNCTION p.blank()",
        ],
        ANON_NID,
        ["NotNullViolation", "23502", "p.people", "column name"],
    ),
    (
        "foreign-key",  # an application's delete trigger writes a log row with a foreign key
        [
            "CREATE TABLE p.registry (nid TEXT PRIMARY KEY)",
            "CREATE TABLE p.gone (nid TEXT CONSTRAINT gone_registry_fk REFERENCES p.registry)",
            "CREATE FUNCTION p.log() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN INSERT INTO p.gone VALUES (OLD.nid); RETURN OLD; END$$",
            "CREATE TRIGGER log AFTER DELETE ON p.people FOR EACH ROW EXECUTE FUNCTION p.log()",
        ],
        DELETE,
        ["ForeignKeyViolation", "23503", "p.gone", "gone_registry_fk"],
    ),
    (
        "trigger",  # an application's trigger that quotes the whole row in its message
        [
            "CREATE FUNCTION p.refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN RAISE EXCEPTION 'refused %', OLD USING DETAIL = OLD::text; END$$",
            "CREATE TRIGGER refuse BEFORE UPDATE OR DELETE ON p.people "
            "FOR EACH ROW EXECUTE FUNCTION p.refuse()",
        ],
        ANON_PHONE,
        ["RaiseException", "P0001"],
    ),
]


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def build_pg(url: str, extra: list[str]) -> None:
    with psycopg.connect(libpq(url), autocommit=True) as con:
        con.execute("CREATE SCHEMA p")
        con.execute(PEOPLE)
        with con.cursor() as cur:
            cur.executemany("INSERT INTO p.people VALUES (%s, %s, %s, %s, %s, %s)", ROWS)
        for sql in extra:
            con.execute(sql)


def cli_run(store: str, policies: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update(RETENTION_STORE=store, RETENTION_PSEUDONYM_KEY=KEY)
    return subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", "run", "--policies", str(policies)]
        + ["--as-of", AS_OF, "--max-delete-fraction", "1"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def control_text(store: str) -> str:
    """Every row of the ledger and the runs table, as text."""
    s = open_store(store)
    with s.connect(read_only=True) as session:
        return repr(
            [
                session.fetchall(sa.text(f"SELECT * FROM retention_control.{t}"))
                for t in ("audit", "runs")
            ]
        )


def assert_no_marker(*texts: str) -> None:
    for text in texts:
        assert MARK not in text and MARK.lower() not in text, text


def write_policy(tmp_path: Path, action: str) -> Path:
    d = tmp_path / "policies"
    d.mkdir(exist_ok=True)
    (d / "people.yaml").write_text(policy(action))
    return d


def in_process(store: str, policies: Path) -> StoreRejected:
    with pytest.raises(StoreRejected) as info:
        run_policies(
            open_store(store),
            load_policies([str(policies)]),
            date.fromisoformat(AS_OF),
            PseudonymKey.from_text(KEY),
            RunOptions(max_delete_fraction=None),
        )
    return info.value


@pytest.mark.postgres
@pytest.mark.parametrize(("case", "ddl", "action", "names"), PG_CASES, ids=[c[0] for c in PG_CASES])
def test_postgres_refusals_name_the_constraint_and_quote_no_value(
    tmp_path, case, ddl, action, names
):
    with pg_database() as url:
        build_pg(url, ddl)
        before = people(url)
        policies = write_policy(tmp_path, action)
        proc = cli_run(url, policies, tmp_path)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert_no_marker(proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        for name in names:
            assert name in proc.stderr, proc.stderr
        exc = in_process(url, policies)
        assert_no_marker(str(exc), repr(exc))
        for name in names:
            assert name in str(exc), str(exc)
        assert exc.__cause__ is None and exc.__suppress_context__
        assert_no_marker(control_text(url))
        assert people(url) == before  # the failed batch was rolled back


def people(url: str) -> list[tuple]:
    with psycopg.connect(libpq(url)) as con:
        return con.execute("SELECT * FROM p.people ORDER BY id").fetchall()


@pytest.mark.postgres
def test_postgres_missing_privilege_names_the_table(tmp_path):
    with pg_database() as url:
        build_pg(url, [])
        db = sa.engine.make_url(url).database
        role = f"rj_ro_{db[-10:]}"
        with psycopg.connect(libpq(url), autocommit=True) as con:
            con.execute(f"CREATE ROLE {role} LOGIN")
            con.execute(f"GRANT CREATE, CONNECT ON DATABASE {db} TO {role}")
            con.execute(f"GRANT USAGE ON SCHEMA p TO {role}")
            con.execute(f"GRANT SELECT ON p.people TO {role}")
        try:
            limited = sa.engine.make_url(url).set(username=role).render_as_string(False)
            policies = write_policy(tmp_path, ANON_PHONE)
            proc = cli_run(limited, policies, tmp_path)
            assert proc.returncode == 1, (proc.stdout, proc.stderr)
            assert_no_marker(proc.stdout, proc.stderr)
            assert "InsufficientPrivilege" in proc.stderr and "42501" in proc.stderr
            assert "grant" in proc.stderr
            exc = in_process(limited, policies)
            assert exc.sqlstate == "42501" and exc.terminal
            assert_no_marker(str(exc), control_text(url))
        finally:
            with psycopg.connect(libpq(url), autocommit=True) as con:
                con.execute(f"DROP OWNED BY {role}")
            with psycopg.connect(libpq(url).rsplit("/", 1)[0] + "/test", autocommit=True) as con:
                con.execute(f"DROP ROLE IF EXISTS {role}")


DUCK_CASES = [
    ("check", "phone TEXT CHECK (length(phone) > 20)", "", ANON_PHONE, ["CHECK", "p.people"]),
    (
        "unique",
        "email TEXT",
        f"UPDATE p.people SET name = '{MARK}-shared-name'; "
        "CREATE UNIQUE INDEX email_name ON p.people (email, name)",
        ANON_EMAIL,
        ["UNIQUE", "p.people"],
    ),
]


@pytest.mark.parametrize(
    ("case", "column", "after", "action", "names"), DUCK_CASES, ids=[c[0] for c in DUCK_CASES]
)
def test_duckdb_refusals_quote_no_value(tmp_path, case, column, after, action, names):
    import duckdb

    path = tmp_path / "w.duckdb"
    ddl = PEOPLE.replace("    email TEXT,\n", "").replace("    phone TEXT,\n", "")
    ddl = ddl.replace("    nid TEXT,\n", f"    nid TEXT,\n    {column},\n")
    other = "phone TEXT" if "email" in column else "email TEXT"
    ddl = ddl.replace("    closed_at DATE", f"    {other},\n    closed_at DATE")
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA p")
    con.execute(ddl)
    cols = ["id", "name", "nid", column.split()[0], other.split()[0], "closed_at"]
    for r in ROWS:
        by = dict(zip(["id", "name", "email", "nid", "phone", "closed_at"], r, strict=True))
        con.execute(
            f"INSERT INTO p.people ({', '.join(cols)}) VALUES (?, ?, ?, ?, ?, ?)",
            [by[c] for c in cols],
        )
    if after:
        con.execute(after)
    con.close()
    policies = write_policy(tmp_path, action)
    proc = cli_run(str(path), policies, tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert_no_marker(proc.stdout, proc.stderr)
    for name in names:
        assert name in proc.stderr, proc.stderr
    exc = in_process(str(path), policies)
    assert_no_marker(str(exc), repr(exc), control_text(str(path)))


# (scenario, extra DDL, what the message must name, the exit codes a run may end with)
PG_TRANSIENT = [
    (
        # the application's trigger waits for a table another session has locked; the
        # database gives up after lock_timeout
        "lock-timeout",
        [
            "CREATE TABLE p.registry (nid TEXT)",
            "CREATE FUNCTION p.wait() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN SET LOCAL lock_timeout = '200ms'; "
            "LOCK TABLE p.registry IN ACCESS EXCLUSIVE MODE; RETURN NEW; END$$",
            "CREATE TRIGGER wait BEFORE UPDATE ON p.people FOR EACH ROW EXECUTE FUNCTION p.wait()",
        ],
        ["LockNotAvailable", "55P03"],
        {1, 4},
    ),
    (
        # the connection is lost in the middle of the batch (the server ends the session)
        "connection-loss",
        [
            "CREATE FUNCTION p.die() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END$$",
            "CREATE TRIGGER die BEFORE UPDATE ON p.people FOR EACH ROW EXECUTE FUNCTION p.die()",
        ],
        [],
        {1, 4},
    ),
]


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("case", "ddl", "names", "codes"), PG_TRANSIENT, ids=[c[0] for c in PG_TRANSIENT]
)
def test_postgres_lock_timeout_and_connection_loss_quote_no_value(
    tmp_path, case, ddl, names, codes
):
    with pg_database() as url:
        build_pg(url, ddl)
        before = people(url)
        policies = write_policy(tmp_path, ANON_PHONE)
        holder = psycopg.connect(libpq(url))
        try:
            if case == "lock-timeout":
                holder.execute("LOCK TABLE p.registry IN ACCESS EXCLUSIVE MODE")
            proc = cli_run(url, policies, tmp_path)
        finally:
            holder.rollback()
            holder.close()
        assert proc.returncode in codes, (proc.returncode, proc.stdout, proc.stderr)
        assert_no_marker(proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        for name in names:
            assert name in proc.stderr, proc.stderr
        assert_no_marker(control_text(url))
        assert people(url) == before  # the failed batch was rolled back


@pytest.mark.postgres
@pytest.mark.parametrize("case", ["check", "trigger"])
def test_a_failed_dagster_materialisation_quotes_no_value(tmp_path, case):
    """The same refusals through the Dagster asset: the failure's description and metadata,
    every event's message and the asset checks hold no marker value."""
    import dagster as dg

    from assets.policy_assets import partitions_def, policy_assets
    from assets.resources import PseudonymKeyResource, StoreResource

    _, ddl, action, _ = next(c for c in PG_CASES if c[0] == case)
    with pg_database() as url:
        build_pg(url, ddl)
        policies = write_policy(tmp_path, action)
        (asset,) = policy_assets(load_policies([str(policies)]), partitions_def())
        result = dg.materialize(
            [asset],
            partition_key=AS_OF,
            resources={
                "store": StoreResource(location=url),
                "pseudonym_key": PseudonymKeyResource(key=KEY),
            },
            raise_on_error=False,
        )
        assert not result.success
        texts = []
        for e in result.all_events:
            texts.append(e.message or "")
            texts.append(repr(e.event_specific_data))
        assert_no_marker(*texts)
        assert_no_marker(control_text(url))
