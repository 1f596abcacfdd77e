"""Helpers for tests that build a small schema of their own on DuckDB and on PostgreSQL (with
the `store` fixture of conftest.py): policies from YAML texts, plain SQL in and rows out,
subject holds, and policies several tests share."""

import sqlalchemy as sa

from retention_jobs import control
from retention_jobs.load import PolicySet, load_text
from retention_jobs.store.base import Store

# A shop whose ended customers go with their subscriptions, and leads anonymised a year after
# they were last seen: tables s.customers, s.subscriptions, s.leads (crash and hold-queue tests).
SHOP_POLICY = """
purpose: shop
title: Customers
legal_basis: contract
owner: ops
rules:
  - name: ended
    table: s.customers
    key: id
    subject: {kind: customer, column: id}
    clock: ended_at
    keep_for: P1Y
    action: delete
    cascade:
      - {table: s.subscriptions, on: customer_id, action: delete}
"""

LEADS_POLICY = """
purpose: leads
title: Leads
legal_basis: consent
owner: marketing
rules:
  - name: cold
    table: s.leads
    key: id
    subject: {kind: lead, column: id}
    clock: seen_at
    keep_for: P1Y
    action: anonymise
    columns: {email: hash}
"""


def policies(*texts: str) -> PolicySet:
    return PolicySet(tuple(load_text(t, f"p{i}.yaml") for i, t in enumerate(texts)))


def sql(store: Store, *statements: str) -> None:
    """Run `statements`, then create the control schema."""
    with store.connect() as s:
        for st in statements:
            s.execute(st)
        control.ensure_control_schema(store, s)


def rows(store: Store, query: str) -> list[tuple]:
    with store.connect(read_only=True) as s:
        return [tuple(r) for r in s.fetchall(sa.text(query))]


def hold(store: Store, subject: str, case_ref: str, reason: str) -> None:
    with store.connect() as s:
        control.add_hold(
            s, scope="subject", subject=subject, case_ref=case_ref, reason=reason, placed_by="t"
        )
