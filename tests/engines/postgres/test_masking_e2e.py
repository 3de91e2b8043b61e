"""Masking end to end: real clients through callgate against a real PostgreSQL (issue 6).

Every test asserts on what the client received: no clear value a rule covers anywhere in the
result, the error or the notice, whichever way the statement asks for it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterable
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.engines.postgres.conftest import ALLOW_APPS, MakeThrough, Through

pytestmark = pytest.mark.integration

EMAILS = ("ann.lee@example.com", "bob@corp.example.org", "cy@mail.example.net")
CARD = "4111 1111 1111 1111"
SCHEMA = f"""
create table customers (
    id int primary key, name text, email text unique, ssn text, phone text, contact text,
    note text, balance int8
);
insert into customers values
    (1, 'Ann Lee', '{EMAILS[0]}', '123-45-6789', '+1 415 555 2671', 'ann@home.example.com',
     'paid with {CARD} yesterday', 4111111111111111),
    (2, 'Bob Ray', '{EMAILS[1]}', '234-56-7890', '+44 20 7946 0958', 'bob@work.example.com',
     'nothing to see', 20),
    (3, 'Cy Doe', '{EMAILS[2]}', '345-67-8901', '+1 212 555 0100', 'not an address',
     'write to zed@example.com please', 30);
create view customer_emails as select id, email from customers;
create function email_of(int) returns text language sql stable
    as $$ select email from customers where id = $1 $$;
create table orders (id int, customer_id int, item text);
insert into orders values (1, 1, 'tea'), (2, 1, 'cake'), (3, 2, 'tea');
"""

EMAIL_PARTIAL = {"columns": ["customers.email"], "style": "partial", "keep": 4}
CARD_REDACT = {"detect": ["credit_card"], "style": "redact"}


def masking_policy(*mask: dict[str, Any], exempt: list[str] | None = None) -> dict[str, Any]:
    policy: dict[str, Any] = {**ALLOW_APPS, "mask": list(mask)}
    if exempt:
        policy["mask_exempt"] = {"groups": exempt}
    return policy


def through_with(
    make_through: MakeThrough, *mask: dict[str, Any], exempt: list[str] | None = None
) -> Through:
    th = make_through({"policies": [masking_policy(*mask, exempt=exempt)]})
    with th.server.connect(th.database) as conn:
        conn.execute(SCHEMA)
    return th


def flat(values: Iterable[Any]) -> list[str]:
    """Every value of a result (rows of tuples, records, bytes), as text."""
    out: list[str] = []
    for v in values:
        if isinstance(v, list | tuple) or (hasattr(v, "values") and callable(v.values)):
            out.extend(flat(v.values() if hasattr(v, "values") else v))
        elif isinstance(v, bytes | bytearray | memoryview):
            out.append(bytes(v).decode("utf-8", "replace"))
        else:
            out.append(str(v))
    return out


def assert_no_clear(values: Iterable[Any], secrets: Iterable[str] = (*EMAILS, CARD)) -> None:
    text = "\n".join(flat(values))
    for secret in secrets:
        assert secret not in text, f"{secret!r} came through unmasked: {text!r}"


def partial(value: str, keep: int = 4) -> str:
    visible = min(keep, len(value) // 2)
    return "*" * (len(value) - visible) + value[-visible:]


# --- psql ----------------------------------------------------------------------------------------


def test_psql_masks_each_statement_of_a_batch(make_through: MakeThrough) -> None:
    th = through_with(make_through, EMAIL_PARTIAL, CARD_REDACT)
    argv = ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(th.gw.port), "-d", "main"]
    sql = (
        "select id, email from customers order by id;"
        "select 'plain@example.com' as literal, count(*) from orders;"
        "select note from customers where id = 1;"
        "\\copy (select email, note from customers order by id) to stdout\n"
    )
    done = subprocess.run(
        argv + ["-f", "-"],
        input=sql,
        capture_output=True,
        text=True,
        env={**os.environ, **th.env()},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [f"{i + 1}|{partial(e)}" for i, e in enumerate(EMAILS)]
    # a column rule masks the column, not every email-shaped text: the literal is untouched
    assert lines[3] == "plain@example.com|3"
    assert lines[4] == "paid with [REDACTED] yesterday"
    assert lines[5] == f"{partial(EMAILS[0])}\tpaid with [REDACTED] yesterday"
    assert_no_clear([done.stdout])


# --- psycopg: every evasion path, text and binary ------------------------------------------------

EVASIONS = {
    "plain": "select email from customers order by id",
    "expression lower": "select lower(email) from customers order by id",
    "expression concat": "select email || '' from customers order by id",
    "alias": "select e from (select email as e, id from customers) s order by id",
    "cte": "with c as (select id, email as x from customers) select x from c order by id",
    "subquery": "select (select email from customers c2 where c2.id = c.id) from customers c",
    "scalar agg": "select string_agg(email, ',') from customers",
    "whole row": "select row_to_json(c)::text from customers c",
    "view": "select email from customer_emails order by id",
    "function": "select email_of(id) from customers order by id",
    "union": "select 'x' union all select email from customers",
    "join": "select o.item, c.email from orders o join customers c on c.id = o.customer_id",
}


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_evasion_paths(make_through: MakeThrough, binary: bool) -> None:
    th = through_with(make_through, EMAIL_PARTIAL, CARD_REDACT)
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        cur = conn.cursor(binary=binary)
        for name, sql in EVASIONS.items():
            rows = cur.execute(sql).fetchall()
            assert rows, name
            assert_no_clear(rows)
        # a parameterised statement goes through Parse/Bind/Describe/Execute
        rows = cur.execute("select id, email from customers where id = %s", (1,)).fetchall()
        assert rows == [(1, partial(EMAILS[0]))]
        # the same prepared statement again and again (psycopg prepares after 5 uses)
        for _ in range(7):
            row = cur.execute("select email, note from customers where id = %s", (3,)).fetchone()
            assert row is not None
            assert row[0] == partial(EMAILS[2])
            assert_no_clear([row])
        # RETURNING
        rows = cur.execute(
            "update customers set name = name where id = 2 returning email"
        ).fetchall()
        assert rows == [(partial(EMAILS[1]),)]
        # SQL-level PREPARE / EXECUTE
        cur.execute("prepare p(int) as select email from customers where id = $1")
        assert cur.execute("execute p(1)").fetchall() == [(partial(EMAILS[0]),)]
        # DECLARE / FETCH, and psycopg's server-side (named) cursor
        with conn.transaction():
            cur.execute("declare c cursor for select id, email from customers order by id")
            first = cur.execute("fetch 2 from c").fetchall()
            rest = cur.execute("fetch all from c").fetchall()
        assert [r[1] for r in first + rest] == [partial(e) for e in EMAILS]
        with conn.transaction(), conn.cursor(name="server_side", binary=binary) as named:
            named.itersize = 1
            named.execute("select email from customers order by id")
            got = [r[0] for r in named]
        assert got == [partial(e) for e in EMAILS]
        # COPY … TO STDOUT, text and CSV
        with cur.copy("copy customers (email, note) to stdout") as copy:
            text = b"".join(bytes(block) for block in copy).decode()
        assert partial(EMAILS[0]) in text and "[REDACTED]" in text
        with cur.copy("copy (select lower(email) from customers) to stdout (format csv)") as copy:
            csv = b"".join(bytes(block) for block in copy).decode()
        assert csv.count("\n") == 3
        assert_no_clear([text, csv])


def test_errors_and_notices_do_not_leak(make_through: MakeThrough) -> None:
    th = through_with(make_through, EMAIL_PARTIAL, CARD_REDACT)
    notices: list[str] = []
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        conn.add_notice_handler(
            lambda d: notices.append(f"{d.message_primary} {d.message_detail or ''}")
        )
        # a unique violation's detail shows the key: Key (email)=(…) already exists
        with pytest.raises(psycopg.errors.UniqueViolation) as dup:
            conn.execute("insert into customers (id, email) values (%s, %s)", (9, EMAILS[0]))
        diag = dup.value.diag
        assert diag.message_detail is not None and "already exists" in diag.message_detail
        assert_no_clear([str(dup.value), diag.message_detail, diag.message_primary])
        # a failed cast quotes the value in the message
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as cast:
            conn.execute("select email::int from customers where id = 1")
        assert_no_clear([str(cast.value), cast.value.diag.message_primary])
        # a notice raised with a value (DO cannot be seen through: the message is hidden)
        conn.execute(
            "do $$ begin raise notice 'found %', (select email from customers where id = 1); end $$"
        )
        assert notices
        assert_no_clear(notices)
        # the session is still usable
        assert conn.execute("select 1").fetchone() == (1,)


# --- asyncpg (binary) ----------------------------------------------------------------------------


def test_asyncpg_binary(make_through: MakeThrough) -> None:
    th = through_with(make_through, EMAIL_PARTIAL, CARD_REDACT)

    async def main() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=th.gw.port,
            database="main",
            user="whoever",
            password=th.key,
            ssl=False,
        )
        try:
            rows = await conn.fetch("select id, email, note, balance from customers order by id")
            assert [r["email"] for r in rows] == [partial(e) for e in EMAILS]
            assert rows[0]["note"] == "paid with [REDACTED] yesterday"
            # a card number in a binary int8 column: found by the detector, masked to NULL
            assert rows[0]["balance"] is None and rows[1]["balance"] == 20
            assert_no_clear([list(r.values()) for r in rows])
            for sql in EVASIONS.values():
                assert_no_clear([list(r.values()) for r in await conn.fetch(sql)])
            # a prepared statement reused with parameters
            stmt = await conn.prepare("select email from customers where id = $1")
            for i in (1, 2, 3, 1):
                assert await stmt.fetchval(i) == partial(EMAILS[i - 1])
            # a portal read in chunks (Execute with a row limit, PortalSuspended)
            async with conn.transaction():
                got = [
                    r["email"]
                    async for r in conn.cursor(
                        "select email from customers order by id", prefetch=1
                    )
                ]
            assert got == [partial(e) for e in EMAILS]
            # COPY … TO STDOUT through asyncpg
            chunks: list[bytes] = []

            async def sink(data: bytes) -> None:
                chunks.append(data)

            await conn.copy_from_query("select email from customers", output=sink)
            assert_no_clear(chunks)
            with pytest.raises(asyncpg.UniqueViolationError) as dup:
                await conn.execute(
                    "insert into customers (id, email) values ($1, $2)", 8, EMAILS[1]
                )
            assert_no_clear([str(dup.value), dup.value.detail or ""])
        finally:
            await conn.close()

    asyncio.run(main())


# --- styles ------------------------------------------------------------------------------------


def test_each_style(make_through: MakeThrough) -> None:
    th = through_with(
        make_through,
        {"columns": ["customers.email"], "style": "hash"},
        {"columns": ["customers.ssn"], "style": "null"},
        {"columns": ["customers.phone"], "style": "partial", "keep": 4},
        {"columns": ["customers.contact"], "style": "email"},
        {"columns": ["customers.name"], "style": "redact"},
    )
    sql = "select email, ssn, phone, contact, name from customers order by id"
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        text_rows = conn.execute(sql).fetchall()
        binary_rows = conn.cursor(binary=True).execute(sql).fetchall()
        tokens = [r[0] for r in text_rows]
        assert all(t.startswith("tok_") and len(t) == 20 for t in tokens)
        assert len(set(tokens)) == 3
        assert [r[1] for r in text_rows] == [None, None, None]
        assert text_rows[0][2] == "***********2671"
        assert [r[3] for r in text_rows] == [
            "****@home.example.com",
            "****@work.example.com",
            "[REDACTED]",
        ]
        assert {r[4] for r in text_rows} == {"[REDACTED]"}
        # text and binary give the same tokens; so does a join on the client
        assert [r[0] for r in binary_rows] == tokens
        orders = conn.execute(
            "select c.email, count(*) from orders o join customers c on c.id = o.customer_id"
            " group by c.email"
        ).fetchall()
        assert dict(orders) == {tokens[0]: 2, tokens[1]: 1}
    # stable across sessions
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        assert conn.execute("select email from customers where id = 1").fetchone() == (tokens[0],)
    assert_no_clear([text_rows, binary_rows], EMAILS + ("123-45-6789", "Ann Lee"))


def test_detectors_alone(make_through: MakeThrough) -> None:
    th = through_with(
        make_through,
        {"detect": ["email", "credit_card", "us_ssn", "phone"], "style": "redact"},
    )
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "select email, ssn, phone, note, 'mail me: amy@example.com' from customers order by id"
        ).fetchall()
        assert rows[0][:3] == ("[REDACTED]", "[REDACTED]", "[REDACTED]")
        assert rows[0][3] == "paid with [REDACTED] yesterday"
        assert rows[0][4] == "mail me: [REDACTED]"
        assert rows[2][3] == "write to [REDACTED] please"
        assert_no_clear(rows, (*EMAILS, CARD, "123-45-6789", "zed@example.com", "amy@example.com"))
        # detectors do not touch what they do not find
        assert conn.execute("select name from customers where id = 2").fetchone() == ("Bob Ray",)


# --- exemptions, on_unknown: deny, fail closed, catalog refresh ----------------------------------


def test_exempt_group_sees_clear_values(make_through: MakeThrough) -> None:
    th = through_with(make_through, EMAIL_PARTIAL, exempt=["support"])
    support = th.gw.create_key("support1", ["apps", "support"])
    sql = "select email from customers order by id"
    with psycopg.connect(th.dsn(password=support), autocommit=True) as conn:
        assert [r[0] for r in conn.execute(sql).fetchall()] == list(EMAILS)
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        assert [r[0] for r in conn.execute(sql).fetchall()] == [partial(e) for e in EMAILS]


def test_on_unknown_deny_refuses_before_forwarding(make_through: MakeThrough) -> None:
    th = through_with(make_through, {**EMAIL_PARTIAL, "on_unknown": "deny"})
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        for sql in (
            "select * from customer_emails",
            "select email_of(1)",
            "select email_of(%s)",
        ):
            params = (1,) if "%s" in sql else None
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as denied:
                conn.execute(sql, params)
            assert "on_unknown: deny" in str(denied.value)
        # what can be seen through is masked as usual, in the same session
        assert conn.execute("select email from customers where id = 1").fetchone() == (
            partial(EMAILS[0]),
        )


def test_value_that_cannot_be_masked_fails_closed(make_through: MakeThrough) -> None:
    th = through_with(make_through, EMAIL_PARTIAL, CARD_REDACT)
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        # detectors cannot tell text from numbers in a binary COPY: nothing of it is sent
        with (
            pytest.raises(psycopg.errors.InternalError_) as failed,
            conn.cursor().copy("copy customers to stdout (format binary)") as copy,
        ):
            for _ in copy:
                pass
        assert "could not mask" in str(failed.value)
        # rows may have been sent before the failure: the session ends (FATAL)
        assert failed.value.diag.severity == "FATAL"
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    # the gateway and other sessions go on
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        assert conn.execute("select count(*) from customers").fetchone() == (3,)


def test_catalog_refreshed_after_ddl(make_through: MakeThrough) -> None:
    th = through_with(make_through, {"columns": ["*.email"], "style": "redact"})
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        conn.execute("create table leads (id int, email text)")
        conn.execute("insert into leads values (7, 'lead@example.com')")
        # a table the catalog knows: its id is shown, its email masked by the glob
        assert conn.execute("select id, email from leads").fetchone() == (7, "[REDACTED]")
        conn.execute("create view lead_ids as select id from leads")
        # a view is never seen through: its columns are masked
        assert conn.execute("select id from lead_ids").fetchone() == ("[REDACTED]",)


def test_masking_is_recorded_without_values(make_through: MakeThrough) -> None:
    th = through_with(make_through, EMAIL_PARTIAL, CARD_REDACT)
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        conn.execute("select id, email, note from customers").fetchall()
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute("select email::int from customers where id = 1")
    log = th.gw.log_text()
    assert "masked email (public.customers.email): 3, note (content detectors): 1" in log
    sessions = th.sessions()
    recorded = [th.session(s["id"]) for s in sessions]
    audit = str(recorded)
    assert_no_clear([log, audit])
    masked = [
        e["payload"]
        for session in recorded
        for e in session["events"]
        if e["type"] == "query.masked"
    ]
    assert {"column": "email", "source": "public.customers.email", "values": 3} in masked[0][
        "columns"
    ]
    assert {"column": "note", "source": "content detectors", "values": 1} in masked[0]["columns"]
