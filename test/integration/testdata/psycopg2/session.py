"""psycopg2 (libpq, simple query protocol) through pgsidecar.

Run by test/integration/psycopg2_test.go with Debian's /usr/bin/python3.
Writes one JSON object per line to stdout, each with a "check" field naming
what it reports, and exits non-zero on any error it did not expect; judging
the values is the Go test's job.

Env: PGSIDECAR_TEST_URL; PSYCOPG2_TIMEZONE and PSYCOPG2_SEARCH_PATH, values
to SET; PSYCOPG2_TABLE, a table (id int primary key, v text) that the Go test
created and reads afterwards.
"""

import json
import os

import psycopg2
import psycopg2.errors


def emit(check, **fields):
    print(json.dumps({"check": check, **fields}), flush=True)


def connect(name):
    return psycopg2.connect(os.environ["PGSIDECAR_TEST_URL"], application_name=name, connect_timeout=10)


def show(conn):
    with conn.cursor() as cur:
        cur.execute("SHOW TimeZone")
        tz = cur.fetchone()[0]
        cur.execute("SHOW search_path")
        return {"timezone": tz, "search_path": cur.fetchone()[0]}


def settings():
    """SET on a, in autocommit, is seen by a and not by b, connected at the same time."""
    a = connect("psycopg2-settings-a")
    b = connect("psycopg2-settings-b")
    try:
        a.autocommit = True
        b.autocommit = True
        with a.cursor() as cur:
            cur.execute("SET TimeZone TO %s", (os.environ["PSYCOPG2_TIMEZONE"],))
            cur.execute("SET search_path TO " + os.environ["PSYCOPG2_SEARCH_PATH"])
        emit("settings", client="a", step="after_set", **show(a))
        emit("settings", client="b", step="while_a_set", **show(b))
        emit("settings", client="a", step="after_b", **show(a))
    finally:
        a.close()
        b.close()


def transactions():
    """psycopg2's default: the first statement opens a transaction (an implicit
    BEGIN), which lasts until commit() or rollback(). The status libpq reports
    comes from the server's ReadyForQuery, relayed by the sidecar."""
    table = os.environ["PSYCOPG2_TABLE"]
    conn = connect("psycopg2-transactions")
    try:
        statuses = {"new": conn.info.transaction_status}
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (id, v) VALUES (%s, %s)", (1, "committed"))
            statuses["after_insert"] = conn.info.transaction_status
            conn.commit()
            statuses["after_commit"] = conn.info.transaction_status

            cur.execute(f"INSERT INTO {table} (id, v) VALUES (%s, %s)", (2, "rolled back"))
            conn.rollback()

            cur.execute(f"INSERT INTO {table} (id, v) VALUES (%s, %s)", (3, "aborted"))
            try:
                cur.execute("SELECT 1 / %s", (0,))
                raise AssertionError("SELECT 1 / 0 succeeded")
            except psycopg2.errors.DivisionByZero as e:
                division = {"code": e.pgcode, "message": e.diag.message_primary}
            statuses["after_error"] = conn.info.transaction_status
            conn.rollback()
            statuses["after_rollback"] = conn.info.transaction_status

            cur.execute("SELECT %s::int + 1, %s::text, %s::int[]", (41, "ü ' \"", [1, 2, 3]))
            n, text, arr = cur.fetchone()
            conn.commit()
        emit("transactions", statuses=statuses, division=division, n=n, text=text, array=arr)
    finally:
        conn.close()


settings()
transactions()
