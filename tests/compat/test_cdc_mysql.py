"""Change data capture from MariaDB into the lake, against a private MariaDB
(see mariadb.py): the type mapping both ways (snapshot and binlog), the
snapshot while writers write, SIGKILL at random moments, the source server
restarted, a column added, a purged binlog, and the refusals at create.

Every check reads what a user would: the change records in the lake,
replayed in source order, compared row by row with `SELECT ... ORDER BY`
on the source."""

import base64
import json
import random
import time

import botocore.exceptions
import pymysql
import pytest

from conftest import wait_for
from mariadb import cdc_request, changes, db, load_items, mdb, order, replay, running_writers  # noqa: F401 - fixtures


def describe(client, name):
    return client.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]


def snapshot_complete(client, name):
    d = describe(client, name)
    infos = d["Source"]["DatabaseSourceDescription"]["SnapshotInfo"]
    return infos and all(i["Status"] == "COMPLETE" for i in infos)


def source_rows(mdb, db, table, key="id"):
    """The source table as {key-json: row}, values typed as hydrant maps them."""
    with mdb.connect(db) as c:
        cur = c.cursor(pymysql.cursors.DictCursor)
        cur.execute(f"SELECT * FROM {table} ORDER BY {key}")
        rows = cur.fetchall()
    keys = key.split(",")
    return {json.dumps({k: r[k] for k in keys}, sort_keys=True): r for r in rows}


# --- the type mapping -------------------------------------------------------

TYPES_DDL = """
CREATE TABLE types (
  id BIGINT NOT NULL PRIMARY KEY,
  i8 TINYINT, u8 TINYINT UNSIGNED, i16 SMALLINT, u16 SMALLINT UNSIGNED,
  i24 MEDIUMINT, u24 MEDIUMINT UNSIGNED, i32 INT, u32 INT UNSIGNED,
  i64 BIGINT, u64 BIGINT UNSIGNED,
  dec_ DECIMAL(30,10), f FLOAT, d DOUBLE, b BIT(12), bo BOOLEAN,
  c CHAR(4), vc VARCHAR(100), t TEXT,
  bin BINARY(4), vb VARBINARY(10), bl BLOB,
  dt DATE, tm TIME(3), dtm DATETIME(6), ts TIMESTAMP(3) NULL, y YEAR,
  j JSON, e ENUM('small','medium','large'), s SET('a','b','c'),
  l1 VARCHAR(20) CHARACTER SET latin1
) DEFAULT CHARSET=utf8mb4
"""

TYPE_ROWS = [
    (1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
     -9223372036854775808, 18446744073709551615,
     "-12345678901234567890.1234567890", 0.5, 2.718281828459045, 0b101010101010, 1,
     "ab", "héllo ✓ 🌊", "a\nb\"c'd\\e",
     b"\x00\x01", b"\xff\x00\xfe", bytes(range(256)),
     "2024-02-29", "-838:59:58.125", "2024-02-29 23:59:58.123456", "2024-02-29 23:59:58.123", 2024,
     '{"a": [1, 2.5, "x"], "b": {"c": null, "d": true}}', "medium", "a,c", "café €‰Ÿ"),
    (2,) + (None,) * 30,
    (3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "0.0000000001", -1.25, -0.1, 0, 0,
     "", "", "", b"\x00\x00\x00\x00", b"", b"",
     "1000-01-01", "00:00:00.000", "1000-01-01 00:00:00.000000", "1970-01-01 00:00:01.000", 1901,
     "[]", "small", "", ""),
]

EXPECTED = {
    1: {
        "id": 1, "i8": -128, "u8": 255, "i16": -32768, "u16": 65535, "i24": -8388608, "u24": 16777215,
        "i32": -2147483648, "u32": 4294967295, "i64": -9223372036854775808, "u64": 18446744073709551615,
        "dec_": "-12345678901234567890.1234567890", "f": 0.5, "d": 2.718281828459045, "b": 0b101010101010,
        "bo": 1, "c": "ab", "vc": "héllo ✓ 🌊", "t": "a\nb\"c'd\\e",
        "bin": base64.b64encode(b"\x00\x01\x00\x00").decode(), "vb": base64.b64encode(b"\xff\x00\xfe").decode(),
        "bl": base64.b64encode(bytes(range(256))).decode(),
        "dt": "2024-02-29", "tm": "-838:59:58.125", "dtm": "2024-02-29T23:59:58.123456",
        "ts": "2024-02-29T23:59:58.123Z", "y": 2024,
        "j": {"a": [1, 2.5, "x"], "b": {"c": None, "d": True}}, "e": "medium", "s": "a,c", "l1": "café €‰Ÿ",
    },
    2: {"id": 2, **{k: None for k in [
        "i8", "u8", "i16", "u16", "i24", "u24", "i32", "u32", "i64", "u64", "dec_", "f", "d", "b", "bo",
        "c", "vc", "t", "bin", "vb", "bl", "dt", "tm", "dtm", "ts", "y", "j", "e", "s", "l1"]}},
    3: {
        "id": 3, "i8": 0, "u8": 0, "i16": 0, "u16": 0, "i24": 0, "u24": 0, "i32": 0, "u32": 0, "i64": 0, "u64": 0,
        "dec_": "0.0000000001", "f": -1.25, "d": -0.1, "b": 0, "bo": 0, "c": "", "vc": "", "t": "",
        "bin": base64.b64encode(b"\x00\x00\x00\x00").decode(), "vb": "", "bl": "",
        "dt": "1000-01-01", "tm": "00:00:00.000", "dtm": "1000-01-01T00:00:00.000000",
        "ts": "1970-01-01T00:00:01.000Z", "y": 1901, "j": [], "e": "small", "s": "", "l1": "",
    },
}


def insert_types(mdb, db, offset=0):
    with mdb.connect(db) as c:
        cur = c.cursor()
        cur.execute("SET time_zone = '+00:00'")
        for row in TYPE_ROWS:
            cur.execute(f"INSERT INTO types VALUES ({', '.join(['%s'] * len(row))})", (row[0] + offset,) + row[1:])


def test_every_type_maps_the_same_in_the_snapshot_and_the_binlog(mdb, db, make_server):
    mdb.execute(TYPES_DDL, db=db)
    insert_types(mdb, db)  # read by the snapshot
    server = make_server(mdb.config())
    client = server.client()
    client.create_delivery_stream(**cdc_request("types", mdb.port, [db], [f"{db}.types"]))
    wait_for(lambda: snapshot_complete(client, "types"), timeout=60, what="the snapshot")
    insert_types(mdb, db, offset=100)  # read from the binlog
    mdb.execute("UPDATE types SET vc = 'changed', u64 = 1 WHERE id = 101", db=db)
    mdb.execute("DELETE FROM types WHERE id = 103", db=db)
    got = wait_for(lambda: (lambda c: c if len(c) >= 8 else None)(changes(server)), timeout=60, what="8 change records")
    assert len(got) == 8, [c["op"] for c in got]
    by = {(c["op"], c["key"]["id"]): c for c in got}
    for i, expected in EXPECTED.items():
        assert by[("r", i)]["after"] == expected, f"snapshot row {i}"
        assert by[("c", 100 + i)]["after"] == {**expected, "id": 100 + i}, f"binlog row {100 + i}"
        assert by[("r", i)]["source"]["snapshot"] is True
        assert by[("c", 100 + i)]["before"] is None
    u = by[("u", 101)]
    assert u["before"] == {**EXPECTED[1], "id": 101}
    assert u["after"] == {**EXPECTED[1], "id": 101, "vc": "changed", "u64": 1}
    d = by[("d", 103)]
    assert d["before"] == {**EXPECTED[3], "id": 103} and d["after"] is None
    for c in got:
        s = c["source"]
        assert s["connector"] == "mysql" and s["db"] == db and s["table"] == "types" and s["name"] == "types"
        assert isinstance(s["ts_ms"], int) and s["ts_ms"] > 1_600_000_000_000
        if c["op"] != "r":
            assert isinstance(s["xid"], int) and s["file"].startswith("binlog.")


# --- snapshot while writers write, and crashes -----------------------------

def check_replay(mdb, db, server):
    """The lake's change log, replayed, equals the source table; no change
    record appears twice."""
    target = source_rows(mdb, db, "items")
    seen = {}

    def caught_up():
        got = changes(server)
        seen["got"] = got
        return got if replay(got).get((db, "items"), {}) == target else None

    try:
        got = wait_for(caught_up, timeout=180, interval=0.5, what="the lake's change log to replay to the source table")
    except AssertionError:
        have = replay(seen["got"]).get((db, "items"), {})
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


def test_snapshot_of_100k_rows_while_four_writers_write(mdb, db, make_server):
    load_items(mdb, db)
    server = make_server(mdb.config())
    client = server.client()
    with running_writers(mdb, db) as errors:
        client.create_delivery_stream(**cdc_request("items", mdb.port, [db], [f"{db}.*"], partition_by_table=True))
        wait_for(lambda: snapshot_complete(client, "items"), timeout=300, interval=0.5, what="the snapshot")
        time.sleep(1)
    assert not errors, errors
    got = check_replay(mdb, db, server)
    ops = {op: sum(1 for c in got if c["op"] == op) for op in "rcud"}
    assert ops["r"] > 50_000 and ops["c"] > 0 and ops["u"] > 0 and ops["d"] > 0, ops
    # Partitioned by table, as the prefix said.
    root = server.lake / "lake" / "cdc"
    assert {p.relative_to(root).parts[0] for p in root.rglob("*") if p.is_file()} == {"items"}
    # The watermark table exists and is not captured.
    assert not any(c["source"]["table"] == "watermarks" for c in got)


def test_sigkill_during_snapshot_and_streaming_loses_and_repeats_nothing(mdb, db, make_server):
    load_items(mdb, db, 60_000)
    server = make_server(mdb.config())
    client = server.client()
    client.create_delivery_stream(**cdc_request("kill", mdb.port, [db], [f"{db}.items"]))
    rng = random.Random(7)
    with running_writers(mdb, db) as errors:
        for i in range(5):
            time.sleep(rng.uniform(0.5, 2.5))
            server.kill()
            server.start()
            client = server.client()
        wait_for(lambda: snapshot_complete(client, "kill"), timeout=300, interval=0.5, what="the snapshot")
        time.sleep(1)
        server.kill()
        server.start()
    assert not errors, errors
    got = check_replay(mdb, db, server)
    assert sum(1 for c in got if c["op"] == "r") > 30_000


# --- the source server ------------------------------------------------------

def test_source_restart_is_retried_and_nothing_is_lost(mdb, db, make_server):
    mdb.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, v INT NOT NULL, note VARCHAR(40))", db=db)
    server = make_server(mdb.config())
    client = server.client()
    client.create_delivery_stream(**cdc_request("restart", mdb.port, [db], [f"{db}.items"]))
    wait_for(lambda: snapshot_complete(client, "restart"), timeout=60, what="the snapshot")
    for i in range(100):
        mdb.execute("INSERT INTO items VALUES (%s, %s, NULL)", (i, i), db=db)
    wait_for(lambda: len(changes(server)) >= 100, timeout=60, what="100 changes")
    mdb.stop()
    try:
        failure = wait_for(
            lambda: describe(client, "restart").get("FailureDescription"), timeout=60, what="the outage in Describe"
        )
        assert "retrying" in failure["Details"] and f"127.0.0.1:{mdb.port}" in failure["Details"], failure
        reconnects = wait_for(
            lambda: [l for l in urllib_get(server, "/-/metrics").splitlines()
                     if l.startswith('hydrant_source_reconnects_total{stream="restart"}') and not l.endswith(" 0")],
            timeout=60, what="a reconnect in /-/metrics",
        )
        assert reconnects
    finally:
        mdb.start()
    for i in range(100, 200):
        mdb.execute("INSERT INTO items VALUES (%s, %s, NULL)", (i, i), db=db)
    mdb.execute("UPDATE items SET v = -v WHERE id < 50", db=db)
    check_replay(mdb, db, server)
    wait_for(lambda: "FailureDescription" not in describe(client, "restart"), timeout=60, what="the failure to clear")


def post(server, path):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(server.endpoint + path, method="POST"), timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def urllib_get(server, path):
    import urllib.request

    with urllib.request.urlopen(server.endpoint + path, timeout=10) as r:
        return r.read().decode()


def test_added_column_flows_through_and_truncate_is_a_change(mdb, db, make_server):
    mdb.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, v INT NOT NULL, note VARCHAR(40))", db=db)
    mdb.execute("INSERT INTO items VALUES (1, 1, 'a')", db=db)
    server = make_server(mdb.config())
    client = server.client()
    client.create_delivery_stream(**cdc_request("ddl", mdb.port, [db], [f"{db}.*"]))
    wait_for(lambda: snapshot_complete(client, "ddl"), timeout=60, what="the snapshot")
    mdb.execute("INSERT INTO items VALUES (2, 2, 'b')", db=db)
    mdb.execute("ALTER TABLE items ADD COLUMN price DECIMAL(10,2) NOT NULL DEFAULT 0", db=db)
    mdb.execute("INSERT INTO items VALUES (3, 3, 'c', 9.95)", db=db)
    mdb.execute("UPDATE items SET price = 1.50 WHERE id = 1", db=db)
    # A table created after the start: captured (it matches db.*) without a snapshot.
    mdb.execute("CREATE TABLE later (id INT PRIMARY KEY, x VARCHAR(10))", db=db)
    mdb.execute("INSERT INTO later VALUES (1, 'x')", db=db)
    got = wait_for(lambda: (lambda c: c if len(c) >= 5 else None)(changes(server)), timeout=60, what="5 changes")
    by = {(c["op"], c["source"]["table"], c["key"]["id"]): c for c in got}
    assert "price" not in by[("c", "items", 2)]["after"]
    assert by[("c", "items", 3)]["after"] == {"id": 3, "v": 3, "note": "c", "price": "9.95"}
    assert by[("u", "items", 1)]["after"]["price"] == "1.50"
    assert by[("c", "later", 1)]["after"] == {"id": 1, "x": "x"}
    mdb.execute("TRUNCATE TABLE items", db=db)
    mdb.execute("INSERT INTO items VALUES (9, 9, 'z', 0)", db=db)
    got = wait_for(lambda: (lambda c: c if len(c) >= 7 else None)(changes(server)), timeout=60, what="7 changes")
    assert [c["op"] for c in got][-2:] == ["t", "c"]
    assert replay(got)[(db, "items")] == {json.dumps({"id": 9}): {"id": 9, "v": 9, "note": "z", "price": "0.00"}}


def test_purged_binlog_fails_the_stream_naming_the_position(mdb, db, make_server):
    mdb.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, v INT NOT NULL)", db=db)
    server = make_server(mdb.config())
    client = server.client()
    client.create_delivery_stream(**cdc_request("purged", mdb.port, [db], [f"{db}.items"]))
    wait_for(lambda: snapshot_complete(client, "purged"), timeout=60, what="the snapshot")
    mdb.execute("INSERT INTO items VALUES (1, 1)", db=db)
    wait_for(lambda: len(changes(server)) >= 1, timeout=60, what="the first change")
    server.stop()
    mdb.execute("INSERT INTO items VALUES (2, 2)", db=db)
    mdb.execute("FLUSH BINARY LOGS")
    current = mdb.execute("SHOW MASTER STATUS")[0][0]

    def purged():
        # The server keeps a file a binlog dump thread still reads: wait for
        # the stopped hydrant's connection to go.
        mdb.execute(f"PURGE BINARY LOGS TO '{current}'")
        return [r[0] for r in mdb.execute("SHOW BINARY LOGS")] == [current]

    wait_for(purged, timeout=60, interval=0.5, what="the old binlog files to be purged")
    server.start()
    client = server.client()
    failure = wait_for(lambda: describe(client, "purged").get("FailureDescription"), timeout=60, what="the failure")
    assert "no longer holds" in failure["Details"] and "binlog." in failure["Details"], failure
    assert "stopped" in failure["Details"]
    # A snapshot on request recovers: every table emptied (a `t` record),
    # then read afresh; the change log replays to the source again.
    assert post(server, "/-/streams/nothing/snapshot")[0] == 404
    status, body = post(server, "/-/streams/purged/snapshot")
    assert status == 202, body
    wait_for(lambda: "FailureDescription" not in describe(client, "purged") and snapshot_complete(client, "purged"),
             timeout=60, what="the new snapshot")
    mdb.execute("INSERT INTO items VALUES (3, 3)", db=db)
    want = {json.dumps({"id": i}): {"id": i, "v": i} for i in (1, 2, 3)}
    got = wait_for(lambda: (lambda c: c if replay(c).get((db, "items")) == want else None)(changes(server)),
                   timeout=60, what="the replay to equal the source after the new snapshot")
    assert [c["op"] for c in got].count("t") == 1


# --- refusals at create -----------------------------------------------------

def refused(client, request, *needles):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.create_delivery_stream(**request)
    message = e.value.response["Error"]["Message"]
    for n in needles:
        assert n in message, message
    return e.value.response["Error"]["Code"]


def test_a_table_without_a_key_is_refused_unless_surrogate_keys_name_one(mdb, db, make_server):
    mdb.execute("CREATE TABLE nokey (a INT NOT NULL, b VARCHAR(10))", db=db)
    mdb.execute("INSERT INTO nokey VALUES (1, 'x'), (2, 'y')", db=db)
    server = make_server(mdb.config())
    client = server.client()
    code = refused(client, cdc_request("nokey", mdb.port, [db], [f"{db}.nokey"]), f"{db}.nokey", "SurrogateKeys")
    assert code == "InvalidArgumentException"
    client.create_delivery_stream(
        **cdc_request("nokey", mdb.port, [db], [f"{db}.nokey"], surrogate_keys=[f"{db}.nokey.a"])
    )
    got = wait_for(lambda: (lambda c: c if len(c) >= 2 else None)(changes(server)), timeout=60, what="2 rows")
    assert sorted(c["key"]["a"] for c in got) == [1, 2]


def test_excluded_columns_are_not_captured(mdb, db, make_server):
    mdb.execute("CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(50), secret VARCHAR(50))", db=db)
    mdb.execute("INSERT INTO users VALUES (1, 'a@x', 'pw1')", db=db)
    server = make_server(mdb.config())
    client = server.client()
    request = cdc_request("cols", mdb.port, [db], [f"{db}.users"], columns={"Exclude": [f"{db}.users.secret"]})
    client.create_delivery_stream(**request)
    wait_for(lambda: snapshot_complete(client, "cols"), timeout=60, what="the snapshot")
    mdb.execute("UPDATE users SET secret = 'pw2', email = 'b@x' WHERE id = 1", db=db)
    got = wait_for(lambda: (lambda c: c if len(c) >= 2 else None)(changes(server)), timeout=60, what="2 changes")
    assert all("secret" not in json.dumps(c) for c in got)
    assert got[-1]["after"] == {"id": 1, "email": "b@x"}
    excluded_key = cdc_request("cols2", mdb.port, [db], [f"{db}.users"], columns={"Exclude": [f"{db}.users.id"]})
    refused(client, excluded_key, "id", "cannot be excluded")


def test_server_settings_and_privileges_are_checked_at_create(mdb, db, make_server):
    mdb.execute("CREATE TABLE items (id INT PRIMARY KEY)", db=db)
    server = make_server(mdb.config())
    client = server.client()
    mdb.execute("SET GLOBAL binlog_row_image = 'MINIMAL'")
    try:
        refused(client, cdc_request("img", mdb.port, [db], [f"{db}.items"]), "binlog_row_image", "FULL")
    finally:
        mdb.execute("SET GLOBAL binlog_row_image = 'FULL'")
    mdb.execute("SET GLOBAL binlog_format = 'STATEMENT'")
    try:
        refused(client, cdc_request("fmt", mdb.port, [db], [f"{db}.items"]), "binlog_format", "ROW")
    finally:
        mdb.execute("SET GLOBAL binlog_format = 'ROW'")
    # A user who may read the tables but not the binlog.
    mdb.execute("CREATE USER IF NOT EXISTS 'reader'@'%' IDENTIFIED BY 'r'")
    mdb.execute("GRANT SELECT, INSERT, UPDATE, CREATE, BINLOG MONITOR ON *.* TO 'reader'@'%'")
    weak = make_server(mdb.config(secret_user="reader", secret_password="r"))
    refused(weak.client(), cdc_request("priv", mdb.port, [db], [f"{db}.items"]), "REPLICATION SLAVE")
    refused(client, cdc_request("none", mdb.port, [db], [f"{db}.nothing*"]), "no table matches")
    refused(client, cdc_request("down", 1, [db], [f"{db}.items"]), "127.0.0.1:1")
    # Nothing was created by a refusal.
    assert client.list_delivery_streams()["DeliveryStreamNames"] == []
