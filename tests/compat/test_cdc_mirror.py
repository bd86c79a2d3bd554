"""The warehouse mirror: a private MariaDB's tables kept equal, in the shared
PostgreSQL, by a DatabaseAsSource stream with RedshiftDestinationConfiguration.

Each test mirrors into a schema of its own (the `warehouse` fixture drops
it, and the stream's ledger rows, at the end), and compares what a user
would: `SELECT … ORDER BY id` on the source and on the mirror, row by row,
after writers, SIGKILLs, DDL and truncates; and the staged change log,
replayed, gives the same rows."""

import random
import time
from decimal import Decimal


from conftest import wait_for
from mariadb import cdc_request, changes, db, load_items, mdb, replay, running_writers  # noqa: F401 - fixtures
from pg import JDBC_URL, ROLE, ledger, psql, rows as pg_rows, scalar, warehouse  # noqa: F401 - fixture
from test_cdc_mysql import post, snapshot_complete


def mirror_request(name, mdb, db, tables, schema, **extra):
    r = cdc_request(name, mdb.port, [db], tables, **extra)
    staging = r.pop("ExtendedS3DestinationConfiguration")
    staging.pop("ProcessingConfiguration")
    staging.pop("DynamicPartitioningConfiguration", None)
    r["RedshiftDestinationConfiguration"] = {
        "RoleARN": ROLE,
        "ClusterJDBCURL": JDBC_URL,
        "CopyCommand": {"DataTableName": schema, "CopyOptions": "JSON 'auto'"},
        "Username": "postgres",
        "Password": "unused",
        "S3Configuration": staging,
        "ProcessingConfiguration": {"Enabled": True, "Processors": [{"Type": "AppendDelimiterToRecord"}]},
    }
    return r


def source_items(mdb, db):
    with mdb.connect(db) as c:
        cur = c.cursor()
        cur.execute("SELECT id, v, note FROM items ORDER BY id")
        return [{"id": r[0], "v": r[1], "note": r[2]} for r in cur.fetchall()]


def mirror_items(schema):
    return pg_rows(f"SELECT id, v, note FROM {schema}.items ORDER BY id")


def rows_now(sql):
    """The rows, or None while the query cannot run yet (a column not added yet)."""
    try:
        return pg_rows(sql)
    except AssertionError:
        return None


def mirror_exists(schema, table="items"):
    return scalar(f"SELECT to_regclass('{schema}.{table}') IS NOT NULL") == "t"


def check_mirror(mdb, db, schema, server):
    """The mirror equals the source, row by row; so does the staged change
    log, replayed from the start; the ledger holds each object once."""
    want = source_items(mdb, db)
    seen = {}

    def equal():
        seen["got"] = mirror_items(schema) if mirror_exists(schema) else []
        return seen["got"] == want

    try:
        wait_for(equal, timeout=240, interval=1, what="the mirror to equal the source")
    except AssertionError:
        got = {r["id"]: r for r in seen["got"]}
        src = {r["id"]: r for r in want}
        raise AssertionError(
            f"mirror differs: {len(set(src) - set(got))} missing, {len(set(got) - set(src))} extra, "
            f"{sum(1 for k in src if k in got and got[k] != src[k])} different of {len(src)}"
        ) from None
    staged = replay(changes(server))[(db, "items")]
    assert sorted(staged.values(), key=lambda r: r["id"]) == want


def test_mirror_equals_the_source_after_a_snapshot_while_four_writers_write(mdb, db, warehouse, make_server):
    load_items(mdb, db)
    server = make_server(mdb.config())
    client = server.client()
    name = warehouse.stream("mirror")
    with running_writers(mdb, db) as errors:
        client.create_delivery_stream(**mirror_request(name, mdb, db, [f"{db}.items"], warehouse.schema))
        wait_for(lambda: snapshot_complete(client, name), timeout=300, interval=0.5, what="the snapshot")
        time.sleep(1)
    assert not errors, errors
    check_mirror(mdb, db, warehouse.schema, server)
    # The mirror's key is the source's.
    assert scalar(
        f"SELECT string_agg(a.attname, ',') FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        f"AND a.attnum = ANY(i.indkey) WHERE i.indrelid = '{warehouse.schema}.items'::regclass AND i.indisprimary"
    ) == "id"
    assert ledger(name)["objects"] > 0


def test_mirror_survives_sigkill_five_times(mdb, db, warehouse, make_server):
    load_items(mdb, db, 50_000)
    server = make_server(mdb.config())
    client = server.client()
    name = warehouse.stream("kill")
    client.create_delivery_stream(**mirror_request(name, mdb, db, [f"{db}.items"], warehouse.schema))
    rng = random.Random(11)
    with running_writers(mdb, db) as errors:
        for _ in range(5):
            time.sleep(rng.uniform(0.5, 3.0))
            server.kill()
            server.start()
        client = server.client()
        wait_for(lambda: snapshot_complete(client, name), timeout=300, interval=0.5, what="the snapshot")
    assert not errors, errors
    check_mirror(mdb, db, warehouse.schema, server)
    keys = ledger(name)["keys"]
    assert len(keys) == len(set(keys))


def test_types_columns_added_and_truncate_reach_the_mirror(mdb, db, warehouse, make_server):
    mdb.execute(
        "CREATE TABLE t (id INT PRIMARY KEY, u BIGINT UNSIGNED, d DECIMAL(12,3), f DOUBLE, b VARBINARY(8), "
        "dt DATETIME(3), ts TIMESTAMP(3) NULL, tm TIME, j JSON, e ENUM('x','y'), y YEAR) DEFAULT CHARSET=utf8mb4",
        db=db,
    )
    with mdb.connect(db) as c:
        cur = c.cursor()
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(
            "INSERT INTO t VALUES (1, 18446744073709551615, -1.5, 0.25, X'00ff10', '2024-02-29 12:00:00.250', "
            "'2024-02-29 12:00:00.250', '-01:30:00', '{\"k\": [1, 2]}', 'y', 2024)"
        )
    server = make_server(mdb.config())
    client = server.client()
    name = warehouse.stream("types")
    schema = warehouse.schema
    client.create_delivery_stream(**mirror_request(name, mdb, db, [f"{db}.t"], schema))
    wait_for(lambda: mirror_exists(schema, "t") and scalar(f"SELECT count(*) FROM {schema}.t") == "1",
             timeout=60, what="the snapshot row in the mirror")
    row = pg_rows(
        f"SELECT id, u::text AS u, d, f, encode(b, 'hex') AS b, dt::text AS dt, "
        f"to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') AS ts, tm::text AS tm, j, e, y FROM {schema}.t"
    )[0]
    assert row == {
        "id": 1, "u": "18446744073709551615", "d": Decimal("-1.500"), "f": Decimal("0.25"), "b": "00ff10",
        "dt": "2024-02-29 12:00:00.25", "ts": "2024-02-29 12:00:00.250", "tm": "-01:30:00",
        "j": {"k": [1, 2]}, "e": "y", "y": 2024,
    }
    mdb.execute("ALTER TABLE t ADD COLUMN note VARCHAR(20)", db=db)
    mdb.execute("INSERT INTO t (id, note) VALUES (2, 'added')", db=db)
    mdb.execute("UPDATE t SET id = 3 WHERE id = 1", db=db)
    wait_for(lambda: rows_now(f"SELECT id, note FROM {schema}.t ORDER BY id") == [{"id": 2, "note": "added"}, {"id": 3, "note": None}],
             timeout=60, what="the added column and the key change in the mirror")
    mdb.execute("TRUNCATE TABLE t", db=db)
    mdb.execute("INSERT INTO t (id, note) VALUES (7, 'after')", db=db)
    wait_for(lambda: rows_now(f"SELECT id, note FROM {schema}.t ORDER BY id") == [{"id": 7, "note": "after"}],
             timeout=60, what="the truncate in the mirror")
    # A mirror that drifted (a row written into it by hand) is rebuilt by a
    # snapshot on request: truncated, then read afresh.
    psql(f"INSERT INTO {schema}.t (id, note) VALUES (99, 'stray')")
    status, body = post(server, f"/-/streams/{name}/snapshot")
    assert status == 202, body
    wait_for(lambda: rows_now(f"SELECT id, note FROM {schema}.t ORDER BY id") == [{"id": 7, "note": "after"}],
             timeout=60, what="the mirror rebuilt by the new snapshot")
