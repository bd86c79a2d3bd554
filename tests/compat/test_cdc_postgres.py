"""Change data capture from PostgreSQL into the lake and into the warehouse
mirror, against a private PostgreSQL (see pgsource.py): the type mapping
both ways (snapshot and logical replication, byte for byte alike), the
snapshot while writers write, SIGKILL at random moments, the source server
restarted, a column added and a truncate, a dropped replication slot, the
slot and publication dropped with the stream, and the refusals at create.

Every check reads what a user would: the change records in the lake,
replayed in source order, compared row by row with `SELECT ... ORDER BY`
on the source; the mirror tables in the shared PostgreSQL; the slots and
publications the source server lists."""

import base64
import json
import random
import string
import time
import urllib.error
import urllib.request

from conftest import wait_for
from pg import JDBC_URL, ROLE, ledger, psql, rows as pg_rows, scalar, warehouse  # noqa: F401 - fixture
from pgsource import (  # noqa: F401 - fixtures
    DATABASE, SETTINGS, SourcePostgres, changes, create_items, load_items, order, pg_cdc_request, pgsrc, replay,
    running_writers, schema,
)
from test_cdc_mirror import mirror_exists, rows_now
from test_cdc_mysql import describe, post, refused, snapshot_complete, urllib_get
from test_crash import crash_seed


# --- what hydrant shows -----------------------------------------------------

def stream_status(server, name) -> dict:
    """The stream's entry in /-/streams."""
    for s in json.loads(urllib_get(server, "/-/streams"))["streams"]:
        if s["name"] == name:
            return s
    raise AssertionError(f"stream {name} not in /-/streams")


def source_status(server, name) -> dict:
    """The `source` object of the stream's /-/streams entry."""
    return stream_status(server, name).get("source") or {}


def get(server, path) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(server.endpoint + path, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def capture_slot(pgsrc, server, name, timeout=120) -> str:
    """The stream's replication slot, once the source server lists it and it
    is consistent: every transaction that commits from then on is in it."""
    def ready():
        slot = source_status(server, name).get("slot")
        s = pgsrc.slots().get(slot) if slot else None
        return slot if s and s["confirmed_flush_lsn"] else None

    return wait_for(ready, timeout=timeout, interval=0.2, what=f"stream {name}'s replication slot on the source")


def at_least(server, n, **kw):
    """The change records, once there are at least n."""
    return (lambda c: c if len(c) >= n else None)(changes(server, **kw))


def source_rows(pgsrc, schema, table="items", key="id"):
    """The source table as {key-json: row}."""
    rows = pgsrc.dicts(f"SELECT * FROM {schema}.{table} ORDER BY {key}")
    keys = key.split(",")
    return {json.dumps({k: r[k] for k in keys}, sort_keys=True): r for r in rows}


def check_replay(pgsrc, schema, server, table="items", key="id"):
    """The lake's change log, replayed, equals the source table; no change
    record appears twice, no row is read by the snapshot twice."""
    target = source_rows(pgsrc, schema, table, key)
    seen = {}

    def caught_up():
        got = changes(server)
        seen["got"] = got
        return got if replay(got).get((schema, table), {}) == target else None

    try:
        got = wait_for(caught_up, timeout=180, interval=0.5, what="the lake's change log to replay to the source table")
    except AssertionError:
        have = replay(seen["got"]).get((schema, table), {})
        missing = [k for k in target if k not in have]
        extra = [k for k in have if k not in target]
        wrong = [(k, have[k], target[k]) for k in target if k in have and have[k] != target[k]]
        raise AssertionError(
            f"replay differs from the source: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(extra)} extra (e.g. {extra[:3]}), {len(wrong)} different (e.g. {wrong[:2]}); "
            f"{len(seen['got'])} records"
        ) from None
    ids = [order(c) for c in got]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} change records appear twice"
    reads = [json.dumps(c["key"], sort_keys=True) for c in got if c["op"] == "r"]
    assert len(reads) == len(set(reads)), "a row was read by the snapshot twice"
    return got


# --- the type mapping -------------------------------------------------------

TYPE_COLUMNS = [
    ("i16", "smallint"), ("i32", "integer"), ("i64", "bigint"), ("o", "oid"),
    ("n", "numeric(30,10)"), ("m", "numeric(10,2)"), ("nu", "numeric"),
    ("r", "real"), ("d", "double precision"), ("bo", "boolean"),
    ("c", "char(4)"), ("vc", "varchar(100)"), ("t", "text"), ("nm", "name"), ("ci", "citext"),
    ("by", "bytea"),
    ("dt", "date"), ("tm", "time"), ("ttz", "timetz"), ("ts", "timestamp(6)"), ("tstz", "timestamptz(6)"),
    ("iv", "interval"),
    ("j", "json"), ("jb", "jsonb"), ("u", "uuid"), ("e", "{schema}.mood"),
    ("ia", "integer[]"), ("ta", "text[]"),
    ("ip", "inet"), ("net", "cidr"), ("mac", "macaddr"),
    # Anything else: PostgreSQL's text form.
    ("pt", "point"), ("rg", "int4range"), ("bits", "bit varying(8)"), ("em", "{schema}.email"),
    # Big enough to be TOASTed: an update that leaves it alone sends it as
    # "unchanged", and the record must still carry it whole.
    ("big", "text"),
]

_rng = random.Random(5)
BIG = "".join(_rng.choice(string.ascii_letters + string.digits) for _ in range(30_000))

# Per row: column -> (what is inserted, as PostgreSQL reads it; what the
# record must hold). Columns not named are NULL (row 2: all of them).
TYPE_ROWS = {
    1: {
        "i16": ("-32768", -32768), "i32": ("-2147483648", -2147483648),
        "i64": ("-9223372036854775808", -9223372036854775808), "o": ("4294967295", 4294967295),
        "n": ("-12345678901234567890.123456789", "-12345678901234567890.1234567890"), "m": ("19.9", "19.90"),
        "nu": ("123456789012345678901234567890.000000000000000000001", "123456789012345678901234567890.000000000000000000001"),
        "r": ("3.14", 3.14), "d": ("2.718281828459045", 2.718281828459045), "bo": ("true", True),
        "c": ("ab", "ab  "), "vc": ("héllo ✓ 🌊", "héllo ✓ 🌊"), "t": ("a\nb\"c'd\\e", "a\nb\"c'd\\e"),
        "nm": ("pg_name", "pg_name"), "ci": ("MiXeD Case", "MiXeD Case"),
        "by": (bytes(range(256)), base64.b64encode(bytes(range(256))).decode()),
        "dt": ("2024-02-29", "2024-02-29"), "tm": ("23:59:59.999999", "23:59:59.999999"),
        "ttz": ("12:34:56.123456+00", "12:34:56.123456+00"),
        "ts": ("2024-02-29 23:59:58.123456", "2024-02-29T23:59:58.123456"),
        "tstz": ("2024-02-29 23:59:58.123456+02", "2024-02-29T21:59:58.123456Z"),
        "iv": ("1 year 2 mons 3 days 04:05:06", "P1Y2M3DT4H5M6S"),
        "j": ('{"b": 1, "a": [1, 2.5, "x"], "c": null}', {"b": 1, "a": [1, 2.5, "x"], "c": None}),
        "jb": ('{"b": {"d": true}, "a": 1.50}', {"a": 1.5, "b": {"d": True}}),
        "u": ("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        "e": ("happy", "happy"),
        "ia": ("{1,2,NULL}", [1, 2, None]),
        "ta": ('{"a","b c","d,e","q\\"x",NULL,"NULL"}', ["a", "b c", "d,e", 'q"x', None, "NULL"]),
        "ip": ("192.168.0.1/24", "192.168.0.1/24"), "net": ("10.0.0.0/8", "10.0.0.0/8"),
        "mac": ("08:00:2B:01:02:03", "08:00:2b:01:02:03"),
        "pt": ("(1,2.5)", "(1,2.5)"), "rg": ("(0,5]", "[1,6)"), "bits": ("10101", "10101"),
        "em": ("a@example.com", "a@example.com"), "big": (BIG, BIG),
    },
    2: {},
    3: {
        "i16": ("32767", 32767), "i32": ("2147483647", 2147483647),
        "i64": ("9223372036854775807", 9223372036854775807), "o": ("0", 0),
        "n": ("-0.0000000001", "-0.0000000001"), "m": ("0", "0.00"), "nu": ("0", "0"),
        "r": ("-1.25", -1.25), "d": ("-0.1", -0.1), "bo": ("false", False),
        "c": ("", "    "), "vc": ("", ""), "t": ("", ""), "nm": ("", ""), "ci": ("", ""), "by": (b"", ""),
        "dt": ("0001-01-01", "0001-01-01"), "tm": ("00:00:00", "00:00:00"), "ttz": ("00:00:00+00", "00:00:00+00"),
        "ts": ("0001-01-01 00:00:00", "0001-01-01T00:00:00"),
        "tstz": ("1970-01-01 00:00:00+00", "1970-01-01T00:00:00Z"),
        "iv": ("0", "PT0S"), "j": ("[]", []), "jb": ("{}", {}),
        "u": ("00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000000"),
        "e": ("sad", "sad"), "ia": ("{}", []), "ta": ("{}", []),
        "ip": ("::1", "::1"), "net": ("::/0", "::/0"), "mac": ("00:00:00:00:00:00", "00:00:00:00:00:00"),
        "pt": ("(0,0)", "(0,0)"), "rg": ("empty", "empty"), "bits": ("", ""), "em": ("x@y", "x@y"), "big": ("", ""),
    },
    # PostgreSQL's special values.
    4: {
        "n": ("NaN", "NaN"), "nu": ("NaN", "NaN"), "r": ("NaN", "NaN"), "d": ("Infinity", "Infinity"),
        "tm": ("24:00:00", "24:00:00"), "iv": ("-1 day 00:00:01.5", "P-1DT1.5S"),
        "j": ('"just a string"', "just a string"), "jb": ("null", None),
    },
    5: {
        "nu": ("Infinity", "Infinity"), "r": ("-Infinity", "-Infinity"), "d": ("NaN", "NaN"),
        "iv": ("1 day -01:00:00.5", "P1DT-1H-0.5S"), "jb": ("[1, 2.50, {\"k\": false}]", [1, 2.5, {"k": False}]),
    },
}

EXPECTED = {
    i: {"id": i, **{name: row.get(name, (None, None))[1] for name, _ in TYPE_COLUMNS}} for i, row in TYPE_ROWS.items()
}


def create_types(pgsrc, schema):
    pgsrc.execute("CREATE EXTENSION IF NOT EXISTS citext", admin=True)
    pgsrc.execute(f"CREATE TYPE {schema}.mood AS ENUM ('sad', 'ok', 'happy')")
    pgsrc.execute(f"CREATE DOMAIN {schema}.email AS text CHECK (VALUE LIKE '%@%')")
    columns = ", ".join(f"{name} {type_.format(schema=schema)}" for name, type_ in TYPE_COLUMNS)
    pgsrc.execute(f"CREATE TABLE {schema}.types (id bigint PRIMARY KEY, {columns})")
    pgsrc.execute(f"ALTER TABLE {schema}.types REPLICA IDENTITY FULL")


def insert_types(pgsrc, schema, offset=0):
    """The rows of TYPE_ROWS, ids moved by `offset`, one transaction each."""
    names = [name for name, _ in TYPE_COLUMNS]
    sql = f"INSERT INTO {schema}.types (id, {', '.join(names)}) VALUES ({', '.join(['%s'] * (len(names) + 1))})"
    with pgsrc.connect() as c:
        for i, row in TYPE_ROWS.items():
            c.execute(sql, [str(i + offset)] + [row[n][0] if n in row else None for n in names])


def test_every_type_maps_the_same_in_the_snapshot_and_the_stream(pgsrc, schema, make_server):
    create_types(pgsrc, schema)
    insert_types(pgsrc, schema)  # read by the snapshot
    server = make_server(pgsrc.config())
    client = server.client()
    client.create_delivery_stream(**pg_cdc_request("types", pgsrc.port, [f"{schema}.types"]))
    wait_for(lambda: snapshot_complete(client, "types"), timeout=60, what="the snapshot")
    insert_types(pgsrc, schema, offset=100)  # read from the replication slot
    pgsrc.execute(f"UPDATE {schema}.types SET vc = 'changed', i64 = 1 WHERE id = 101")
    pgsrc.execute(f"DELETE FROM {schema}.types WHERE id = 103")
    n = 2 * len(TYPE_ROWS) + 2
    got = wait_for(lambda: at_least(server, n), timeout=60, what=f"{n} change records")
    assert len(got) == n, [(c["op"], c["key"]) for c in got]
    by = {(c["op"], c["key"]["id"]): c for c in got}
    for i, expected in EXPECTED.items():
        assert by[("r", i)]["after"] == expected, f"snapshot row {i}"
        assert by[("c", 100 + i)]["after"] == {**expected, "id": 100 + i}, f"streamed row {100 + i}"
        assert by[("r", i)]["before"] is None and by[("c", 100 + i)]["before"] is None
        assert by[("r", i)]["key"] == {"id": i}
    # Byte for byte alike: the same numbers spelled the same (3.14, not
    # 3.140000104904175), the same keys in the same order.
    exact = {(c["op"], c["key"]["id"]): c for c in changes(server, exact=True)}
    for i in TYPE_ROWS:
        snap, streamed = exact[("r", i)]["after"], exact[("c", 100 + i)]["after"]
        assert list(snap.items()) == list({**streamed, "id": i}.items()), f"row {i}: the snapshot and the stream differ"
    # An update: the whole row before and after, the TOASTed column that
    # did not change included.
    u = by[("u", 101)]
    assert u["before"] == {**EXPECTED[1], "id": 101}
    assert u["after"] == {**EXPECTED[1], "id": 101, "vc": "changed", "i64": 1}
    assert u["key"] == {"id": 101}
    d = by[("d", 103)]
    assert d["before"] == {**EXPECTED[3], "id": 103} and d["after"] is None
    for c in got:
        s = c["source"]
        assert s["connector"] == "postgresql" and s["name"] == "types", s
        assert s["db"] == DATABASE and s["schema"] == schema and s["table"] == "types", s
        assert s["snapshot"] is (c["op"] == "r"), (c["op"], s)
        assert isinstance(s["lsn"], int) and s["lsn"] > 0 and isinstance(s["row"], int), s
        assert isinstance(s["ts_ms"], int) and s["ts_ms"] > 1_600_000_000_000, s
        assert isinstance(c["ts_ms"], int) and c["ts_ms"] >= s["ts_ms"] - 60_000, c["ts_ms"]
        if c["op"] == "r":
            assert "xid" not in s, s
        else:
            assert isinstance(s["xid"], int) and s["xid"] > 0, s
    # Streamed rows sort in commit order.
    assert [c["key"]["id"] for c in got if c["op"] == "c"] == [100 + i for i in TYPE_ROWS]


# --- snapshot while writers write, and crashes -----------------------------

def test_snapshot_of_100k_rows_while_four_writers_write(pgsrc, schema, make_server):
    load_items(pgsrc, schema)
    server = make_server(pgsrc.config())
    client = server.client()
    with running_writers(pgsrc, schema) as writers:
        client.create_delivery_stream(**pg_cdc_request("items", pgsrc.port, [f"{schema}.*"], partition_by_table=True))
        wait_for(lambda: snapshot_complete(client, "items"), timeout=300, interval=0.5, what="the snapshot")
        # The writers go on a while after the snapshot, into the stream.
        after = writers.changed
        wait_for(lambda: writers.changed > after + 500 or writers.errors, timeout=60, what="writes after the snapshot")
    assert not writers.errors, writers.errors
    got = check_replay(pgsrc, schema, server)
    ops = {op: sum(1 for c in got if c["op"] == op) for op in "rcud"}
    assert ops["r"] > 50_000 and ops["c"] > 0 and ops["u"] > 0 and ops["d"] > 0, ops
    # A primary-key change is one `u` whose before and after keys differ.
    assert any(c["op"] == "u" and c["before"]["id"] != c["after"]["id"] for c in got)
    # Partitioned by table, as the prefix said.
    root = server.lake / "lake" / "cdc"
    assert {p.relative_to(root).parts[0] for p in root.rglob("*") if p.is_file()} == {"items"}
    # The watermark table exists and is not captured.
    assert pgsrc.scalar("SELECT to_regclass('hydrant_meta.watermarks') IS NOT NULL", admin=True) is True
    assert not any(c["source"]["table"] == "watermarks" for c in got)
    status = source_status(server, "items")
    assert status["snapshot_rows"] == ops["r"] and status["slot"] and status["publication"], status


def test_sigkill_during_snapshot_and_streaming_loses_and_repeats_nothing(pgsrc, schema, make_server):
    """Five SIGKILLs at random moments: three while the snapshot runs (if it
    still does), two while changes stream. The writers start once the
    stream's slot is consistent, so every change they commit is in the log
    exactly once: one record per row changed."""
    load_items(pgsrc, schema)
    server = make_server(pgsrc.config())
    client = server.client()
    client.create_delivery_stream(**pg_cdc_request("kill", pgsrc.port, [f"{schema}.items"]))
    capture_slot(pgsrc, server, "kill")
    seed = crash_seed()
    again = f"HYDRANT_CRASH_SEED={seed}"
    print(f"cdc postgres: 5 kills; replay the kill schedule with {again}", flush=True)
    rng = random.Random(seed)
    phases = []
    with running_writers(pgsrc, schema) as writers:
        for k in range(5):
            if k == 3:
                wait_for(lambda: snapshot_complete(client, "kill"), timeout=300, interval=0.5, what="the snapshot")
            time.sleep(rng.uniform(0.2, 2.0))  # a random moment, from the seed
            phases.append("streaming" if snapshot_complete(client, "kill") else "snapshot")
            server.kill()
            server.start(timeout=60)
            client = server.client()
        wait_for(lambda: snapshot_complete(client, "kill"), timeout=300, interval=0.5, what="the snapshot")
        after = writers.changed
        wait_for(lambda: writers.changed > after + 500 or writers.errors, timeout=60, what="writes after the last restart")
    print(f"cdc postgres: kills landed during {phases}; {writers.changed} rows changed, "
          f"{writers.rolled_back} transactions rolled back by PostgreSQL", flush=True)
    assert not writers.errors, writers.errors
    check_replay(pgsrc, schema, server)
    # A change that leaves the row as it was (v * 2 of 0) may still be on
    # its way when the replay already matches: wait for the count, then
    # hold it to exactly one record per row change.
    streamed = lambda: [c for c in changes(server) if c["op"] != "r"]  # noqa: E731
    wait_for(lambda: len(streamed()) >= writers.changed, timeout=60, interval=0.5,
             what=f"{writers.changed} change records")
    got = check_replay(pgsrc, schema, server)
    streamed = [c for c in got if c["op"] != "r"]
    assert len(streamed) == writers.changed, (
        f"{len(streamed)} change records for {writers.changed} row changes ({again}, kills during {phases})"
    )
    assert sum(1 for c in got if c["op"] == "r") > 50_000


# --- the source server ------------------------------------------------------

def test_source_restart_is_retried_and_nothing_is_lost(pgsrc, schema, make_server):
    create_items(pgsrc, schema)
    server = make_server(pgsrc.config())
    client = server.client()
    client.create_delivery_stream(**pg_cdc_request("restart", pgsrc.port, [f"{schema}.items"]))
    wait_for(lambda: snapshot_complete(client, "restart"), timeout=60, what="the snapshot")
    for i in range(100):
        pgsrc.execute(f"INSERT INTO {schema}.items VALUES (%s, %s, NULL)", (i, i))
    wait_for(lambda: len(changes(server)) >= 100, timeout=60, what="100 changes")
    pgsrc.stop()
    try:
        failure = wait_for(
            lambda: describe(client, "restart").get("FailureDescription"), timeout=60, what="the outage in Describe"
        )
        assert "retrying" in failure["Details"] and f"127.0.0.1:{pgsrc.port}" in failure["Details"], failure
        reconnects = wait_for(
            lambda: [l for l in urllib_get(server, "/-/metrics").splitlines()
                     if l.startswith('hydrant_source_reconnects_total{stream="restart"}') and not l.endswith(" 0")],
            timeout=60, what="a reconnect in /-/metrics",
        )
        assert reconnects
    finally:
        pgsrc.start()
    for i in range(100, 200):
        pgsrc.execute(f"INSERT INTO {schema}.items VALUES (%s, %s, NULL)", (i, i))
    pgsrc.execute(f"UPDATE {schema}.items SET v = -v WHERE id < 50")
    got = check_replay(pgsrc, schema, server)
    assert [c["op"] for c in got].count("c") == 200 and [c["op"] for c in got].count("u") == 50
    wait_for(lambda: "FailureDescription" not in describe(client, "restart"), timeout=60, what="the failure to clear")


def test_added_column_flows_through_and_truncate_is_a_change(pgsrc, schema, make_server):
    create_items(pgsrc, schema)
    pgsrc.execute(f"INSERT INTO {schema}.items VALUES (1, 1, 'a')")
    server = make_server(pgsrc.config())
    client = server.client()
    client.create_delivery_stream(**pg_cdc_request("ddl", pgsrc.port, [f"{schema}.*"]))
    wait_for(lambda: snapshot_complete(client, "ddl"), timeout=60, what="the snapshot")
    pgsrc.execute(f"INSERT INTO {schema}.items VALUES (2, 2, 'b')")
    pgsrc.execute(f"ALTER TABLE {schema}.items ADD COLUMN price numeric(10,2) NOT NULL DEFAULT 0")
    pgsrc.execute(f"INSERT INTO {schema}.items VALUES (3, 3, 'c', 9.95)")
    pgsrc.execute(f"UPDATE {schema}.items SET price = 1.50 WHERE id = 1")
    got = wait_for(lambda: at_least(server, 4), timeout=60, what="4 change records")
    by = {(c["op"], c["key"]["id"]): c for c in got}
    assert by[("r", 1)]["after"] == {"id": 1, "v": 1, "note": "a"}
    assert by[("c", 2)]["after"] == {"id": 2, "v": 2, "note": "b"}
    assert by[("c", 3)]["after"] == {"id": 3, "v": 3, "note": "c", "price": "9.95"}
    assert by[("u", 1)]["after"] == {"id": 1, "v": 1, "note": "a", "price": "1.50"}
    pgsrc.execute(f"TRUNCATE {schema}.items")
    pgsrc.execute(f"INSERT INTO {schema}.items VALUES (9, 9, 'z', 0)")
    got = wait_for(lambda: at_least(server, 6), timeout=60, what="6 change records")
    assert [c["op"] for c in got][-2:] == ["t", "c"], [c["op"] for c in got]
    t = got[-2]
    assert t["key"] is None and t["before"] is None and t["after"] is None
    assert t["source"]["schema"] == schema and t["source"]["table"] == "items" and isinstance(t["source"]["lsn"], int)
    assert replay(got)[(schema, "items")] == {json.dumps({"id": 9}): {"id": 9, "v": 9, "note": "z", "price": "0.00"}}


def test_a_dropped_slot_fails_the_stream_and_a_snapshot_on_request_recovers(pgsrc, schema, make_server):
    create_items(pgsrc, schema)
    server = make_server(pgsrc.config())
    client = server.client()
    client.create_delivery_stream(**pg_cdc_request("dropped", pgsrc.port, [f"{schema}.items"]))
    wait_for(lambda: snapshot_complete(client, "dropped"), timeout=60, what="the snapshot")
    pgsrc.execute(f"INSERT INTO {schema}.items VALUES (1, 1, NULL)")
    wait_for(lambda: len(changes(server)) >= 1, timeout=60, what="the first change")
    slot = source_status(server, "dropped")["slot"]
    server.stop()
    # While hydrant is stopped: a change, and an administrator drops its
    # slot (the change is gone with it).
    pgsrc.execute(f"INSERT INTO {schema}.items VALUES (2, 2, NULL)")
    pgsrc.drop_slot(slot)
    server.start()
    client = server.client()
    failure = wait_for(lambda: (lambda f: f if f and "stopped" in f["Details"] else None)(
        describe(client, "dropped").get("FailureDescription")), timeout=60, what="the stream to stop")
    assert slot in failure["Details"], failure
    status, body = get(server, "/-/healthy")
    assert status == 503 and slot in body, (status, body)
    # A snapshot on request recovers: a new slot, every table emptied (a
    # `t` record), then read afresh; the change log replays to the source.
    assert post(server, "/-/streams/nothing/snapshot")[0] == 404
    status, body = post(server, "/-/streams/dropped/snapshot")
    assert status == 202, body
    wait_for(lambda: "FailureDescription" not in describe(client, "dropped") and snapshot_complete(client, "dropped"),
             timeout=60, what="the new snapshot")
    new_slot = capture_slot(pgsrc, server, "dropped")
    pgsrc.execute(f"INSERT INTO {schema}.items VALUES (3, 3, NULL)")
    want = {json.dumps({"id": i}): {"id": i, "v": i, "note": None} for i in (1, 2, 3)}
    got = wait_for(lambda: (lambda c: c if replay(c).get((schema, "items")) == want else None)(changes(server)),
                   timeout=60, what="the replay to equal the source after the new snapshot")
    ops = [c["op"] for c in got]
    assert ops.count("t") == 1, ops
    after_t = sorted((c["op"], c["key"]["id"]) for c in got[ops.index("t") + 1:])
    assert after_t == [("c", 3), ("r", 1), ("r", 2)], after_t
    assert get(server, "/-/healthy")[0] == 200
    assert new_slot in pgsrc.slots()


def test_delete_drops_the_slot_and_the_publication(pgsrc, schema, make_server):
    create_items(pgsrc, schema)
    pgsrc.execute(f"INSERT INTO {schema}.items VALUES (1, 1, NULL)")
    server = make_server(pgsrc.config())
    client = server.client()
    for name in ("gone", "kept"):
        client.create_delivery_stream(**pg_cdc_request(name, pgsrc.port, [f"{schema}.items"], prefix=f"{name}/"))
        wait_for(lambda: snapshot_complete(client, name), timeout=60, what=f"{name}'s snapshot")
    gone, kept = source_status(server, "gone"), source_status(server, "kept")
    assert gone["slot"] != kept["slot"] and gone["publication"] != kept["publication"], (gone, kept)
    slots = pgsrc.slots()
    for s in (gone, kept):
        slot = slots[s["slot"]]
        assert slot["plugin"] == "pgoutput" and slot["slot_type"] == "logical" and slot["database"] == DATABASE, slot
        assert s["publication"] in pgsrc.publications()
        assert f"{schema}.items" in pgsrc.published_tables(s["publication"])
    client.delete_delivery_stream(DeliveryStreamName="gone")
    wait_for(lambda: pgsrc.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                                  (gone["slot"],), admin=True) == 0,
             timeout=120, interval=0.5, what="the deleted stream's slot to be dropped")
    wait_for(lambda: gone["publication"] not in pgsrc.publications(), timeout=120, interval=0.5,
             what="the deleted stream's publication to be dropped")
    # The other stream's slot and publication stay, and it goes on.
    assert kept["slot"] in pgsrc.slots() and kept["publication"] in pgsrc.publications()
    wait_for(lambda: client.list_delivery_streams()["DeliveryStreamNames"] == ["kept"], timeout=60,
             what="only the kept stream listed")
    pgsrc.execute(f"INSERT INTO {schema}.items VALUES (2, 2, NULL)")
    wait_for(lambda: [c["key"]["id"] for c in changes(server, prefix="kept/")] == [1, 2], timeout=60,
             what="the kept stream's change")


def test_per_table_lag_is_how_late_its_last_change_was_appended(pgsrc, schema, make_server):
    create_items(pgsrc, schema)
    pgsrc.execute(f"CREATE TABLE {schema}.other (id integer PRIMARY KEY)")
    pgsrc.execute(f"ALTER TABLE {schema}.other REPLICA IDENTITY FULL")
    server = make_server(pgsrc.config())
    client = server.client()
    client.create_delivery_stream(**pg_cdc_request("lag", pgsrc.port, [f"{schema}.*"]))
    wait_for(lambda: snapshot_complete(client, "lag"), timeout=60, what="the snapshot")
    capture_slot(pgsrc, server, "lag")
    pgsrc.execute(f"INSERT INTO {schema}.items VALUES (1, 1, NULL)")
    wait_for(lambda: at_least(server, 1), timeout=60, what="the first change")
    # Committed while hydrant is down: appended at least `late` seconds
    # after its commit.
    server.stop()
    pgsrc.execute(f"INSERT INTO {schema}.other VALUES (1)")
    late = 3
    time.sleep(late)
    server.start()
    got = wait_for(lambda: at_least(server, 2), timeout=60, what="the late change")
    other = got[-1]
    assert other["source"]["table"] == "other", other
    tables = {t["table"]: t for t in source_status(server, "lag")["tables"]}
    t = tables[f"{schema}.other"]
    assert t["changes"] == 1 and t["last_commit_ms"] == other["source"]["ts_ms"], (t, other)
    assert t["lag_seconds"] >= late - 0.01, t
    # Caught up, the stream's lag is 0; the table's stays its last change's.
    wait_for(lambda: source_status(server, "lag")["lag_seconds"] == 0, timeout=60, what="the stream to catch up")
    after = {x["table"]: x for x in source_status(server, "lag")["tables"]}
    assert after[f"{schema}.other"]["lag_seconds"] == t["lag_seconds"], after
    metric = f'hydrant_source_table_lag_seconds{{stream="lag",table="{schema}.other"}} '
    lines = [ln for ln in urllib_get(server, "/-/metrics").splitlines() if ln.startswith(metric)]
    assert lines and float(lines[0][len(metric):]) == t["lag_seconds"], lines


# --- partitioned tables -----------------------------------------------------

def create_events(pgsrc, schema, regions=("eu", "us")):
    """`events`, partitioned by region, every partition REPLICA IDENTITY FULL."""
    pgsrc.execute(f"CREATE TABLE {schema}.events (id bigint, region text, v integer, PRIMARY KEY (id, region)) "
                  "PARTITION BY LIST (region)")
    for r in regions:
        add_partition(pgsrc, schema, r)


def add_partition(pgsrc, schema, region, full=True):
    pgsrc.execute(f"CREATE TABLE {schema}.events_{region} PARTITION OF {schema}.events FOR VALUES IN ('{region}')")
    if full:
        pgsrc.execute(f"ALTER TABLE {schema}.events_{region} REPLICA IDENTITY FULL")


def stopped(client, name):
    """The stream's FailureDescription once it has stopped."""
    return wait_for(lambda: (lambda f: f if f and "stopped" in f["Details"] else None)(
        describe(client, name).get("FailureDescription")), timeout=60, what=f"stream {name} to stop")


def test_a_partitioned_table_is_captured_as_one_table(pgsrc, schema, make_server):
    create_events(pgsrc, schema)
    pgsrc.execute(f"INSERT INTO {schema}.events SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g "
                  "FROM generate_series(1, 100) g")
    server = make_server(pgsrc.config())
    client = server.client()
    client.create_delivery_stream(**pg_cdc_request("parts", pgsrc.port, [f"{schema}.*"]))
    wait_for(lambda: snapshot_complete(client, "parts"), timeout=60, what="the snapshot")
    tables = [i["Table"] for i in describe(client, "parts")["Source"]["DatabaseSourceDescription"]["SnapshotInfo"]]
    assert tables == [f"{schema}.events"], tables
    capture_slot(pgsrc, server, "parts")
    pgsrc.execute(f"UPDATE {schema}.events SET v = v + 1000 WHERE id <= 10")
    pgsrc.execute(f"DELETE FROM {schema}.events WHERE id BETWEEN 11 AND 20")
    # Into another partition: PostgreSQL deletes there and inserts here.
    pgsrc.execute(f"UPDATE {schema}.events SET region = 'us', v = -22 WHERE id = 22")
    # A partition added later is captured from its first change.
    add_partition(pgsrc, schema, "ap")
    pgsrc.execute(f"INSERT INTO {schema}.events VALUES (1000, 'ap', 1), (1001, 'ap', 2)")
    pgsrc.execute(f"UPDATE {schema}.events SET v = 3 WHERE id = 1001")
    got = check_replay(pgsrc, schema, server, table="events", key="id,region")
    assert {c["source"]["table"] for c in got} == {"events"}, {c["source"]["table"] for c in got}
    ops = [c["op"] for c in got]
    assert ops.count("r") == 100 and ops.count("u") == 11 and ops.count("d") == 11 and ops.count("c") == 3, ops
    moved = [(c["op"], c["before"], c["after"]) for c in got if c["key"] == {"id": 22, "region": "us"}
             or c["key"] == {"id": 22, "region": "eu"}][1:]
    assert moved == [("d", {"id": 22, "region": "eu", "v": 22}, None),
                     ("c", None, {"id": 22, "region": "us", "v": -22})], moved
    # TRUNCATE of the table is a `t` record.
    pgsrc.execute(f"TRUNCATE {schema}.events")
    pgsrc.execute(f"INSERT INTO {schema}.events VALUES (7, 'eu', 7), (8, 'us', 8)")
    got = check_replay(pgsrc, schema, server, table="events", key="id,region")
    assert [c["op"] for c in got][-3:] == ["t", "c", "c"], [c["op"] for c in got][-3:]
    # One partition truncated alone: its rows cannot be deleted record by
    # record, so the stream stops naming it, and a snapshot recovers.
    pgsrc.execute(f"TRUNCATE {schema}.events_us")
    failure = stopped(client, "parts")
    assert f"{schema}.events_us" in failure["Details"] and "truncated" in failure["Details"], failure
    status, body = post(server, "/-/streams/parts/snapshot")
    assert status == 202, body
    wait_for(lambda: "FailureDescription" not in describe(client, "parts") and snapshot_complete(client, "parts"),
             timeout=60, what="the new snapshot")
    capture_slot(pgsrc, server, "parts")
    # A partition added later without REPLICA IDENTITY FULL takes inserts;
    # its first update stops the stream, naming it, never a record without
    # its before image.
    add_partition(pgsrc, schema, "sa", full=False)
    pgsrc.execute(f"INSERT INTO {schema}.events VALUES (50, 'sa', 50)")
    check_replay(pgsrc, schema, server, table="events", key="id,region")
    pgsrc.execute(f"UPDATE {schema}.events SET v = 51 WHERE id = 50")
    failure = stopped(client, "parts")
    assert f"{schema}.events_sa" in failure["Details"] and "REPLICA IDENTITY FULL" in failure["Details"], failure
    assert all(c["before"] is not None for c in changes(server) if c["op"] in ("u", "d"))


def test_a_partition_without_replica_identity_full_is_refused(pgsrc, schema, make_server):
    create_events(pgsrc, schema, regions=("eu",))
    add_partition(pgsrc, schema, "us", full=False)
    server = make_server(pgsrc.config())
    client = server.client()
    slots, publications = set(pgsrc.slots()), pgsrc.publications()
    code = refused(client, pg_cdc_request("part", pgsrc.port, [f"{schema}.events"]), f"{schema}.events_us",
                   "REPLICA IDENTITY FULL")
    assert code == "InvalidArgumentException"
    nothing_left(pgsrc, client, slots, publications)
    pgsrc.execute(f"ALTER TABLE {schema}.events_us REPLICA IDENTITY FULL")
    client.create_delivery_stream(**pg_cdc_request("part", pgsrc.port, [f"{schema}.events"]))
    wait_for(lambda: snapshot_complete(client, "part"), timeout=60, what="the snapshot")
    capture_slot(pgsrc, server, "part")
    pgsrc.execute(f"INSERT INTO {schema}.events VALUES (1, 'us', 1)")
    got = wait_for(lambda: at_least(server, 1), timeout=60, what="the insert")
    assert [(c["op"], c["source"]["table"], c["key"]) for c in got] == [("c", "events", {"id": 1, "region": "us"})]


# --- refusals at create -----------------------------------------------------

def nothing_left(pgsrc, client, slots, publications):
    """A refused create leaves no stream, no slot and no publication."""
    assert client.list_delivery_streams()["DeliveryStreamNames"] == []
    assert set(pgsrc.slots()) == slots
    assert pgsrc.publications() == publications


def test_a_table_without_a_key_is_refused_unless_surrogate_keys_name_one(pgsrc, schema, make_server):
    pgsrc.execute(f"CREATE TABLE {schema}.nokey (a integer NOT NULL, b varchar(10))")
    pgsrc.execute(f"ALTER TABLE {schema}.nokey REPLICA IDENTITY FULL")
    pgsrc.execute(f"INSERT INTO {schema}.nokey VALUES (1, 'x'), (2, 'y')")
    server = make_server(pgsrc.config())
    client = server.client()
    slots, publications = set(pgsrc.slots()), pgsrc.publications()
    code = refused(client, pg_cdc_request("nokey", pgsrc.port, [f"{schema}.nokey"]), f"{schema}.nokey", "primary key")
    assert code == "InvalidArgumentException"
    nothing_left(pgsrc, client, slots, publications)
    client.create_delivery_stream(
        **pg_cdc_request("nokey", pgsrc.port, [f"{schema}.nokey"], surrogate_keys=[f"{schema}.nokey.a"])
    )
    got = wait_for(lambda: at_least(server, 2), timeout=60, what="2 rows")
    assert sorted(c["key"]["a"] for c in got) == [1, 2]
    pgsrc.execute(f"UPDATE {schema}.nokey SET b = 'z' WHERE a = 2")
    got = wait_for(lambda: at_least(server, 3), timeout=60, what="the update")
    assert got[-1]["op"] == "u" and got[-1]["key"] == {"a": 2} and got[-1]["after"] == {"a": 2, "b": "z"}


def test_a_table_without_replica_identity_full_is_refused(pgsrc, schema, make_server):
    pgsrc.execute(f"CREATE TABLE {schema}.plain (id integer PRIMARY KEY, b text)")
    server = make_server(pgsrc.config())
    client = server.client()
    slots, publications = set(pgsrc.slots()), pgsrc.publications()
    code = refused(client, pg_cdc_request("ident", pgsrc.port, [f"{schema}.*"]), f"{schema}.plain", "REPLICA IDENTITY FULL")
    assert code == "InvalidArgumentException"
    nothing_left(pgsrc, client, slots, publications)
    # Doing what the message says is enough.
    pgsrc.execute(f"ALTER TABLE {schema}.plain REPLICA IDENTITY FULL")
    client.create_delivery_stream(**pg_cdc_request("ident", pgsrc.port, [f"{schema}.*"]))
    wait_for(lambda: snapshot_complete(client, "ident"), timeout=60, what="the snapshot")


def test_excluded_columns_are_not_captured(pgsrc, schema, make_server):
    pgsrc.execute(f"CREATE TABLE {schema}.users (id integer PRIMARY KEY, email text, secret text)")
    pgsrc.execute(f"ALTER TABLE {schema}.users REPLICA IDENTITY FULL")
    pgsrc.execute(f"INSERT INTO {schema}.users VALUES (1, 'a@x', 'pw1')")
    server = make_server(pgsrc.config())
    client = server.client()
    request = pg_cdc_request("cols", pgsrc.port, [f"{schema}.users"], columns={"Exclude": [f"{schema}.users.secret"]})
    client.create_delivery_stream(**request)
    wait_for(lambda: snapshot_complete(client, "cols"), timeout=60, what="the snapshot")
    pgsrc.execute(f"UPDATE {schema}.users SET secret = 'pw2', email = 'b@x' WHERE id = 1")
    got = wait_for(lambda: at_least(server, 2), timeout=60, what="2 changes")
    assert all("secret" not in json.dumps(c) and "pw1" not in json.dumps(c) and "pw2" not in json.dumps(c) for c in got)
    assert got[-1]["before"] == {"id": 1, "email": "a@x"} and got[-1]["after"] == {"id": 1, "email": "b@x"}


def test_server_settings_privileges_and_names_are_checked_at_create(pgsrc, schema, make_server):
    create_items(pgsrc, schema)
    server = make_server(pgsrc.config())
    client = server.client()
    slots, publications = set(pgsrc.slots()), pgsrc.publications()
    items = [f"{schema}.items"]
    # A server whose WAL does not carry logical decoding.
    replica = SourcePostgres(settings={**SETTINGS, "wal_level": "replica"})
    try:
        replica.execute(f"CREATE SCHEMA {schema} AUTHORIZATION shop_owner", admin=True)
        create_items(replica, schema)
        code = refused(client, pg_cdc_request("wal", replica.port, items), "wal_level", "logical")
        assert code == "InvalidArgumentException"
    finally:
        replica.close()
    # A user who may read and publish the tables, but not replicate.
    pgsrc.add_user("reader", "reader-pw", replication=False)
    weak = make_server(pgsrc.config(secret_user="reader", secret_password="reader-pw"))
    assert refused(weak.client(), pg_cdc_request("priv", pgsrc.port, items), "REPLICATION") == "InvalidArgumentException"
    assert weak.client().list_delivery_streams()["DeliveryStreamNames"] == []
    # Names.
    assert refused(client, pg_cdc_request("none", pgsrc.port, [f"{schema}.nothing*"]), "no table matches") \
        == "InvalidArgumentException"
    pgsrc.execute("CREATE DATABASE shop_archive", admin=True)
    try:
        code = refused(client, pg_cdc_request("two", pgsrc.port, items, databases=["shop*"]), "shop", "shop_archive")
        assert code == "InvalidArgumentException"
    finally:
        pgsrc.execute("DROP DATABASE shop_archive WITH (FORCE)", admin=True)
    assert refused(client, pg_cdc_request("nodb", pgsrc.port, items, databases=["nothing*"])) == "InvalidArgumentException"
    # A server that is not there.
    assert refused(client, pg_cdc_request("down", 1, items), "127.0.0.1:1") == "InvalidArgumentException"
    # Nothing was created by a refusal.
    nothing_left(pgsrc, client, slots, publications)


# --- the warehouse mirror ---------------------------------------------------

def mirror_request(name, pgsrc, tables, schema_out, **extra):
    """A PostgreSQL source mirrored into schema `schema_out` of the shared PostgreSQL."""
    r = pg_cdc_request(name, pgsrc.port, tables, **extra)
    staging = r.pop("ExtendedS3DestinationConfiguration")
    staging.pop("ProcessingConfiguration")
    staging.pop("DynamicPartitioningConfiguration", None)
    r["RedshiftDestinationConfiguration"] = {
        "RoleARN": ROLE,
        "ClusterJDBCURL": JDBC_URL,
        "CopyCommand": {"DataTableName": schema_out, "CopyOptions": "JSON 'auto'"},
        "Username": "postgres",
        "Password": "unused",
        "S3Configuration": staging,
        "ProcessingConfiguration": {"Enabled": True, "Processors": [{"Type": "AppendDelimiterToRecord"}]},
    }
    return r


def check_mirror(pgsrc, schema, mirror_schema, server):
    """The mirror equals the source, row by row; so does the staged change
    log, replayed from the start."""
    want = pgsrc.dicts(f"SELECT id, v, note FROM {schema}.items ORDER BY id")
    seen = {}

    def equal():
        seen["got"] = pg_rows(f"SELECT id, v, note FROM {mirror_schema}.items ORDER BY id") \
            if mirror_exists(mirror_schema) else []
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
    staged = replay(changes(server))[(schema, "items")]
    assert sorted(staged.values(), key=lambda r: r["id"]) == want


def test_mirror_equals_the_source_after_a_snapshot_while_four_writers_write(pgsrc, schema, warehouse, make_server):
    load_items(pgsrc, schema)
    server = make_server(pgsrc.config())
    client = server.client()
    name = warehouse.stream("pgmirror")
    with running_writers(pgsrc, schema) as writers:
        client.create_delivery_stream(**mirror_request(name, pgsrc, [f"{schema}.items"], warehouse.schema))
        wait_for(lambda: snapshot_complete(client, name), timeout=300, interval=0.5, what="the snapshot")
        after = writers.changed
        wait_for(lambda: writers.changed > after + 500 or writers.errors, timeout=60, what="writes after the snapshot")
    assert not writers.errors, writers.errors
    check_mirror(pgsrc, schema, warehouse.schema, server)
    # The mirror table is named like the source table; its key is the source's.
    assert scalar(
        f"SELECT string_agg(a.attname, ',') FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        f"AND a.attnum = ANY(i.indkey) WHERE i.indrelid = '{warehouse.schema}.items'::regclass AND i.indisprimary"
    ) == "id"
    assert ledger(name)["objects"] > 0


def test_key_change_added_column_and_truncate_reach_the_mirror(pgsrc, schema, warehouse, make_server):
    pgsrc.execute(f"CREATE TABLE {schema}.t (id integer PRIMARY KEY, note text)")
    pgsrc.execute(f"ALTER TABLE {schema}.t REPLICA IDENTITY FULL")
    pgsrc.execute(f"INSERT INTO {schema}.t VALUES (1, 'a'), (2, 'b')")
    server = make_server(pgsrc.config())
    client = server.client()
    name = warehouse.stream("pgddl")
    out = warehouse.schema
    client.create_delivery_stream(**mirror_request(name, pgsrc, [f"{schema}.t"], out))
    wait_for(lambda: mirror_exists(out, "t") and rows_now(f"SELECT id, note FROM {out}.t ORDER BY id")
             == [{"id": 1, "note": "a"}, {"id": 2, "note": "b"}], timeout=60, what="the snapshot in the mirror")
    # A key change: the row moves, it is not copied.
    pgsrc.execute(f"UPDATE {schema}.t SET id = 3 WHERE id = 1")
    wait_for(lambda: rows_now(f"SELECT id, note FROM {out}.t ORDER BY id")
             == [{"id": 2, "note": "b"}, {"id": 3, "note": "a"}], timeout=60, what="the key change in the mirror")
    # An added column: in the mirror, NULL in the rows from before.
    pgsrc.execute(f"ALTER TABLE {schema}.t ADD COLUMN price numeric(10,2)")
    pgsrc.execute(f"INSERT INTO {schema}.t VALUES (4, 'd', 9.95)")
    wait_for(lambda: rows_now(f"SELECT id, note, price::text AS price FROM {out}.t ORDER BY id") == [
        {"id": 2, "note": "b", "price": None}, {"id": 3, "note": "a", "price": None},
        {"id": 4, "note": "d", "price": "9.95"},
    ], timeout=60, what="the added column in the mirror")
    # A truncate empties the mirror table.
    pgsrc.execute(f"TRUNCATE {schema}.t")
    pgsrc.execute(f"INSERT INTO {schema}.t VALUES (7, 'after', 1.5)")
    wait_for(lambda: rows_now(f"SELECT id, note, price::text AS price FROM {out}.t ORDER BY id")
             == [{"id": 7, "note": "after", "price": "1.50"}], timeout=60, what="the truncate in the mirror")
    # A mirror that drifted (a row written into it by hand) is rebuilt by a
    # snapshot on request.
    psql(f"INSERT INTO {out}.t (id, note) VALUES (99, 'stray')")
    status, body = post(server, f"/-/streams/{name}/snapshot")
    assert status == 202, body
    wait_for(lambda: rows_now(f"SELECT id, note, price::text AS price FROM {out}.t ORDER BY id")
             == [{"id": 7, "note": "after", "price": "1.50"}], timeout=60, what="the mirror rebuilt by the new snapshot")


# --- the change log as Parquet ----------------------------------------------

CHANGE_COLUMNS = [
    {"Name": "op", "Type": "string"},
    {"Name": "source", "Type": "struct<db:string,schema:string,table:string,snapshot:boolean,lsn:bigint,row:int,ts_ms:bigint,xid:bigint>"},
    {"Name": "key", "Type": "struct<id:bigint>"},
    {"Name": "before", "Type": "struct<id:bigint,v:int,note:string>"},
    {"Name": "after", "Type": "struct<id:bigint,v:int,note:string>"},
    {"Name": "ts_ms", "Type": "bigint"},
]


def test_the_change_log_as_parquet_reads_back_in_pyarrow_and_duckdb(pgsrc, schema, make_server):
    import duckdb
    import pyarrow.parquet as pq

    create_items(pgsrc, schema)
    pgsrc.execute(f"INSERT INTO {schema}.items SELECT g, g, 'row ' || g FROM generate_series(1, 50) g")
    catalog = f"glue_tables:\n  cdc.items:\n    columns: {json.dumps(CHANGE_COLUMNS)}\n"
    server = make_server(pgsrc.config() + catalog)
    client = server.client()
    request = pg_cdc_request("pq", pgsrc.port, [f"{schema}.items"])
    request["ExtendedS3DestinationConfiguration"]["DataFormatConversionConfiguration"] = {
        "Enabled": True,
        "SchemaConfiguration": {"DatabaseName": "cdc", "TableName": "items", "RoleARN": ROLE},
        "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
        "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {"Compression": "SNAPPY"}}},
    }
    request["ExtendedS3DestinationConfiguration"]["ErrorOutputPrefix"] = "cdc-errors/"
    # Parquet has its own framing: no delimiter processor.
    request["ExtendedS3DestinationConfiguration"].pop("ProcessingConfiguration", None)
    client.create_delivery_stream(**request)
    wait_for(lambda: snapshot_complete(client, "pq"), timeout=60, what="the snapshot")
    pgsrc.execute(f"INSERT INTO {schema}.items SELECT g, g, 'new ' || g FROM generate_series(101, 120) g")
    pgsrc.execute(f"UPDATE {schema}.items SET v = v + 1000 WHERE id <= 10")
    pgsrc.execute(f"DELETE FROM {schema}.items WHERE id BETWEEN 41 AND 45")
    pgsrc.execute(f"UPDATE {schema}.items SET note = NULL WHERE id = 101")
    # Sealed by a clean stop: every buffer is delivered.
    def landed():
        files = [p for p in (server.lake / "lake" / "cdc").rglob("*") if p.is_file()]
        n = sum(pq.ParquetFile(p).metadata.num_rows for p in files)
        return files if n >= 50 + 20 + 10 + 5 + 1 else None
    files = wait_for(landed, timeout=120, what="86 change records as Parquet")
    assert server.stop() == 0
    files = [p for p in (server.lake / "lake" / "cdc").rglob("*") if p.is_file()]
    records = [r for p in files for r in pq.ParquetFile(p).read().to_pylist()]
    assert sorted(r["op"] for r in records).count("r") == 50
    assert [r["op"] for r in records].count("c") == 20
    assert [r["op"] for r in records].count("u") == 11
    assert [r["op"] for r in records].count("d") == 5
    assert not (server.lake / "lake" / "cdc-errors").exists(), "no record failed conversion"
    # Replayed in source order, the Parquet change log is the table.
    state = {}
    for r in sorted(records, key=lambda r: (r["source"]["lsn"], 0 if r["op"] == "r" else 1, r["source"]["row"])):
        if r["op"] == "d":
            state.pop(r["key"]["id"])
        else:
            state[r["after"]["id"]] = r["after"]
    source = {r["id"]: r for r in pgsrc.dicts(f"SELECT id, v, note FROM {schema}.items ORDER BY id")}
    assert state == source
    # DuckDB reads the same files, nested fields and all.
    paths = ", ".join(f"'{p}'" for p in files)
    duck = duckdb.connect().execute(
        f"SELECT op, count(*), sum(after.v) FROM read_parquet([{paths}]) GROUP BY op ORDER BY op"
    ).fetchall()
    expected = {}
    for r in records:
        n, s = expected.get(r["op"], (0, 0))
        expected[r["op"]] = (n + 1, s + (r["after"]["v"] if r["after"] else 0))
    # (A delete has no `after`: its sum is NULL.)
    assert [(op, n, s or None) for op, (n, s) in sorted(expected.items())] == duck
