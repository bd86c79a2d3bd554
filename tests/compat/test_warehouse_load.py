"""RedshiftDestinationConfiguration end to end: records put with boto3 are
staged in the embedded lake and loaded into the real PostgreSQL on
127.0.0.1:5432, where psql reads them back. Each test has its own schema
(see pg.py), compares what PostgreSQL holds with what was sent, and checks
hydrant's ledger (`hydrant.loads`), /-/streams and /-/metrics against it.
"""

import base64
import csv
import gzip
import io
import json
import random
import re
import time
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from conftest import wait_for
from pg import count, ledger, psql, redshift_config, rows, warehouse  # noqa: F401  (warehouse is a fixture)

DEADLINE = 60.0
FAILED_PREFIX = "errors/redshift-failed/"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# --- helpers -----------------------------------------------------------------


def create(client, name, cfg):
    client.create_delivery_stream(DeliveryStreamName=name, DeliveryStreamType="DirectPut", RedshiftDestinationConfiguration=cfg)


def put_all(client, name, records: list[bytes]):
    """put_record_batch in batches of at most 500; every record accepted."""
    for i in range(0, len(records), 500):
        r = client.put_record_batch(DeliveryStreamName=name, Records=[{"Data": d} for d in records[i : i + 500]])
        assert r["FailedPutCount"] == 0, r


def get(server, path) -> bytes:
    with urllib.request.urlopen(server.endpoint + path, timeout=30) as r:
        assert r.status == 200
        return r.read()


def entry(server, name) -> dict:
    for s in json.loads(get(server, "/-/streams"))["streams"]:
        if s["name"] == name:
            return s
    raise AssertionError(f"stream {name} not in /-/streams")


def wh(server, name) -> dict:
    """The stream's `warehouse` object in /-/streams."""
    e = entry(server, name)
    assert isinstance(e.get("warehouse"), dict), f"/-/streams has no warehouse object for {name}: {e}"
    return e["warehouse"]


def last_error(w) -> str:
    """The text of the warehouse's last error ('' when none): hydrant gives it as
    {"message", "at_ms"}."""
    e = w.get("last_error")
    if isinstance(e, dict):
        return e.get("message") or ""
    return e or ""


def rejected_total(w) -> int:
    return sum((w.get("rows_rejected") or {}).values())


def settled(server, name, strict=True):
    """Nothing acknowledged is left to stage or load (lag_records 0); strict: and
    this run staged objects, each of them loaded or failed (after a restart, objects
    loaded before it are replayed and found in the ledger, so not strict there)."""
    e = entry(server, name)
    w = e.get("warehouse") or {}
    done = e.get("lag_records") == 0 and w.get("lag_records") == 0
    if strict:
        done = done and w.get("objects_staged", 0) > 0 and w.get("objects_loaded", 0) + w.get("manifests_failed", 0) == w.get("objects_staged")
    return w if done else None


def wait(predicate, what, server, name, timeout=DEADLINE, interval=0.25):
    """wait_for, and on a timeout what the stream's status and hydrant's log say."""
    try:
        return wait_for(predicate, timeout=timeout, interval=interval, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}\n/-/streams: {status_text(server, name)}\nlog tail:\n{server.log()[-3000:]}") from None


def wait_loaded(server, name, table, n, timeout=DEADLINE, strict=True) -> dict:
    """Waits until `table` holds n rows and the stream has nothing left to load; then
    the table holds exactly n (nothing loaded twice). Returns the warehouse status."""
    wait(lambda: count(table) >= n, f"{n} rows in {table}", server, name, timeout=timeout)
    w = wait(lambda: settled(server, name, strict), f"{name} to settle", server, name, timeout=timeout)
    assert count(table) == n, f"{table} holds {count(table)} rows, {n} were sent"
    assert w["lag_seconds"] == 0, f"nothing is left to load, yet lag_seconds is {w['lag_seconds']}: {w}"
    return w


def status_text(server, name) -> str:
    try:
        return json.dumps(entry(server, name))[:1500]
    except Exception as e:  # the message of a timeout, never its cause
        return repr(e)


def metrics(server) -> list[tuple[str, dict, float]]:
    out = []
    for line in get(server, "/-/metrics").decode().splitlines():
        m = re.match(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m or line.startswith("#"):
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def metric_values(server, metric, stream) -> dict:
    """{reason or '': value} of a metric for one stream."""
    return {l.get("reason", ""): v for n, l, v in metrics(server) if n == metric and l.get("stream") == stream}


def staged(server, bucket, prefix) -> list:
    """The staged objects: under the stream's Prefix, manifests aside."""
    root = server.lake / bucket
    keys = [(p, str(p.relative_to(root))) for p in server.objects(bucket)]
    return [p for p, k in keys if k.startswith(prefix) and "manifest" not in k]


def error_objects(server, bucket) -> list:
    root = server.lake / bucket
    return [p for p in server.objects(bucket) if str(p.relative_to(root)).startswith(FAILED_PREFIX)]


def error_documents(server, bucket) -> list[dict]:
    """Every Firehose error document under errors/redshift-failed/ (manifests aside)."""
    docs = []
    for p in error_objects(server, bucket):
        if p.name.endswith(".manifest"):
            continue
        data = p.read_bytes()
        if data[:2] == GZIP_MAGIC:
            data = gzip.decompress(data)
        docs += [json.loads(line) for line in data.splitlines() if line.strip()]
    return docs


def raw_data(doc) -> bytes:
    return base64.b64decode(doc["rawData"])


def assert_error_document(doc, since_ms):
    for k in ("attemptsMade", "arrivalTimestamp", "errorCode", "errorMessage", "attemptEndingTimestamp", "rawData"):
        assert k in doc, f"the error document lacks {k}: {doc}"
    assert isinstance(doc["attemptsMade"], int) and doc["attemptsMade"] >= 1, doc
    now_ms = time.time() * 1000
    assert since_ms - 1000 <= doc["arrivalTimestamp"] <= now_ms + 1000, doc
    assert doc["arrivalTimestamp"] <= doc["attemptEndingTimestamp"] <= now_ms + 1000, doc
    assert isinstance(doc["errorCode"], str) and doc["errorCode"], doc
    assert isinstance(doc["errorMessage"], str) and doc["errorMessage"], doc


def same_record(got: bytes, sent: bytes) -> bool:
    """rawData is the record as put (or with the newline AppendDelimiterToRecord added)."""
    return got in (sent, sent + b"\n")


def assert_ledger(stream, w, rows_expected, rejected_expected=None):
    """hydrant.loads has one row per loaded object, and their rows add up."""
    led = ledger(stream)
    assert led["objects"] == w["objects_loaded"], f"ledger {led} vs status {w}"
    assert led["rows"] == rows_expected, f"ledger {led}, {rows_expected} rows were loaded"
    assert w["rows_loaded"] == rows_expected, w
    if rejected_expected is not None:
        assert led["rejected"] == rejected_expected, f"ledger {led}, {rejected_expected} rows were refused"
    return led


def cents(x) -> Decimal:
    return Decimal(repr(x)).quantize(Decimal("0.01"))


# --- JSON --------------------------------------------------------------------

NOTES = [
    "plain",
    "tab\there",
    "back\\slash",
    "new\nline",
    "carriage\rreturn",
    "quote \" and 'single'",
    "Zoë 東京 🚀",
    "pipe|comma,semicolon;",
    r"\N is not null",
    "",
]


def test_json_auto_loads_every_record_once_with_its_values(warehouse, make_server):
    """JSON 'auto' into a table named without a schema (public): 200 records put with
    put_record and put_record_batch land once each, every value as sent (numbers,
    booleans, nested JSON into jsonb, text with tabs, backslashes, newlines, quotes,
    unicode; a missing key or null is NULL; keys without a column are ignored). The
    ledger, /-/streams and /-/metrics agree."""
    table = warehouse.public_table("orders", "id int, name varchar(40), amount numeric(10,2), active boolean, tags jsonb, note text")
    name = warehouse.stream("orders")
    server = make_server()
    c = server.client()
    create(c, name, redshift_config(table, bucket="staging", prefix="orders/"))
    sent = []
    for i in range(200):
        rec = {"id": i, "name": f"customer {i}", "amount": i + (i % 100) / 100, "active": i % 3 == 0, "tags": {"k": i, "l": ["a", i]}, "unmapped": "ignored"}
        if i % 11 == 0:
            rec["note"] = None
        elif i % 13 != 0:
            rec["note"] = NOTES[i % len(NOTES)]
        sent.append(rec)
    for rec in sent[:5]:
        c.put_record(DeliveryStreamName=name, Record={"Data": json.dumps(rec)})
    put_all(c, name, [json.dumps(r).encode() for r in sent[5:]])

    w = wait_loaded(server, name, table, 200)
    got = rows(f"SELECT id, name, amount, active, tags, note FROM {table} ORDER BY id")
    want = [
        {"id": r["id"], "name": r["name"], "amount": cents(r["amount"]), "active": r["active"], "tags": r["tags"], "note": r.get("note")}
        for r in sent
    ]
    assert got == want
    assert rejected_total(w) == 0, w
    assert last_error(w) == "", w
    led = assert_ledger(name, w, 200, rejected_expected=0)
    keys = [str(p.relative_to(server.lake / "staging")) for p in staged(server, "staging", "orders/")]
    assert len(keys) == w["objects_staged"], (keys, w)
    for k in led["keys"]:
        assert any(s in k for s in keys), f"ledger object {k} names no staged object: {keys}"
    assert metric_values(server, "hydrant_warehouse_rows_loaded_total", name) == {"": 200}


def test_json_auto_ignorecase_matches_keys_in_any_case(warehouse, make_server):
    """With JSON 'auto ignorecase' keys in any case fill their columns; with JSON 'auto'
    only keys written as the (lower-case) column names do, the others load as NULL."""
    ic = warehouse.table("ignorecase", "id int, name text, amount numeric(10,2), active boolean")
    cs = warehouse.table("exact", "id int, name text, amount numeric(10,2), active boolean")
    s_ic, s_cs = warehouse.stream("ignorecase"), warehouse.stream("exact")
    server = make_server()
    c = server.client()
    create(c, s_ic, redshift_config(ic, options="JSON 'auto ignorecase'", prefix="ic/"))
    create(c, s_cs, redshift_config(cs, options="JSON 'auto'", prefix="cs/"))
    sent = [{"ID": i, "Name": f"n{i}", "AMOUNT": i * 1.5, "active": i % 2 == 0} for i in range(40)]
    data = [json.dumps(r).encode() for r in sent]
    put_all(c, s_ic, data)
    put_all(c, s_cs, data)
    wait_loaded(server, s_ic, ic, 40)
    wait_loaded(server, s_cs, cs, 40)
    assert rows(f"SELECT id, name, amount, active FROM {ic} ORDER BY id") == [
        {"id": r["ID"], "name": r["Name"], "amount": cents(r["AMOUNT"]), "active": r["active"]} for r in sent
    ]
    assert sorted(rows(f"SELECT id, name, amount, active FROM {cs}"), key=lambda r: r["active"]) == sorted(
        [{"id": None, "name": None, "amount": None, "active": r["active"]} for r in sent], key=lambda r: r["active"]
    )


# --- CSV ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,delimiter,quote",
    [("CSV", ",", '"'), ("CSV DELIMITER ';' QUOTE AS '%'", ";", "%")],
    ids=["csv", "csv-semicolon-percent"],
)
def test_csv_with_a_column_list_leaves_other_columns_to_their_default(warehouse, make_server, options, delimiter, quote):
    """CSV records into the columns DataTableColumns lists: quoted fields with the
    delimiter and doubled quotes inside load as written, an empty field is NULL in a
    number column and '' in a text one, and the column left out of the list (in the
    middle of the table) keeps its default."""
    table = warehouse.table("people", "id int, source text NOT NULL DEFAULT 'left-alone', name varchar(40), amount numeric(10,2)")
    name = warehouse.stream("people")
    server = make_server()
    c = server.client()
    create(c, name, redshift_config(table, options=options, columns="id, name, amount"))
    names = [f"plain {delimiter} name", f"say {quote}hi{quote}", "Zoë", "", "x"]
    sent = []
    for i in range(60):
        amount = None if i % 7 == 0 else cents(i * 2.25)
        sent.append((i, names[i % len(names)], amount))
    records = []
    for i, n, a in sent:
        buf = io.StringIO()
        csv.writer(buf, delimiter=delimiter, quotechar=quote, lineterminator="").writerow([i, n, "" if a is None else str(a)])
        records.append(buf.getvalue().encode())
    put_all(c, name, records)
    w = wait_loaded(server, name, table, 60)
    got = rows(f"SELECT id, source, name, amount FROM {table} ORDER BY id")
    assert got == [{"id": i, "source": "left-alone", "name": n, "amount": a} for i, n, a in sent]
    assert rejected_total(w) == 0, w
    assert_ledger(name, w, 60, rejected_expected=0)


# --- times -------------------------------------------------------------------


def _utc(seconds) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)


TIME_CASES = {
    "epochsecs": [
        (0, _utc(0)),
        (946684799, _utc(946684799)),
        (1795698000, _utc(1795698000)),
        (2000000000, _utc(2000000000)),
    ],
    "epochmillisecs": [
        (0, _utc(0)),
        (946684799999, datetime(1999, 12, 31, 23, 59, 59, 999000)),
        (1795698000123, datetime(2026, 11, 26, 13, 0, 0, 123000)),
        (1700000000001, datetime(2023, 11, 14, 22, 13, 20, 1000)),
    ],
    "YYYY-MM-DD HH:MI:SS": [
        ("2026-11-28 17:05:09", datetime(2026, 11, 28, 17, 5, 9)),
        ("1999-12-31 23:59:59", datetime(1999, 12, 31, 23, 59, 59)),
        ("2026-01-01 00:00:00", datetime(2026, 1, 1)),
        ("2026-06-15 12:30:45", datetime(2026, 6, 15, 12, 30, 45)),
    ],
    "auto": [
        ("2026-11-28T17:05:09", datetime(2026, 11, 28, 17, 5, 9)),
        ("2026-11-28 17:05:09.123456", datetime(2026, 11, 28, 17, 5, 9, 123456)),
        ("1999-12-31T23:59:59.5", datetime(1999, 12, 31, 23, 59, 59, 500000)),
        ("2026-01-01", datetime(2026, 1, 1)),
    ],
}


@pytest.mark.parametrize("timeformat", list(TIME_CASES), ids=list(TIME_CASES))
def test_timeformat_loads_timestamps_as_sent(warehouse, make_server, timeformat):
    """TIMEFORMAT 'epochsecs', 'epochmillisecs', a pattern (HH is the 24-hour clock in
    COPY) and 'auto': each value lands in a timestamp and a timestamptz column as the
    instant it denotes (UTC)."""
    table = warehouse.table("times", "id int, ts timestamp, tstz timestamptz")
    name = warehouse.stream("times")
    server = make_server()
    c = server.client()
    create(c, name, redshift_config(table, options=f"JSON 'auto' TIMEFORMAT '{timeformat}'"))
    cases = TIME_CASES[timeformat]
    put_all(c, name, [json.dumps({"id": i, "ts": v, "tstz": v}).encode() for i, (v, _) in enumerate(cases)])
    wait_loaded(server, name, table, len(cases))
    fmt = "YYYY-MM-DD HH24:MI:SS.US"
    got = rows(f"SELECT id, to_char(ts, '{fmt}') AS ts, to_char(tstz AT TIME ZONE 'UTC', '{fmt}') AS tstz FROM {table} ORDER BY id")
    want = [{"id": i, "ts": t.strftime("%Y-%m-%d %H:%M:%S.%f"), "tstz": t.strftime("%Y-%m-%d %H:%M:%S.%f")} for i, (_, t) in enumerate(cases)]
    assert got == want


@pytest.mark.parametrize(
    "dateformat,values",
    [
        ("MM/DD/YYYY", [("11/28/2026", "2026-11-28"), ("01/02/1999", "1999-01-02"), ("12/31/2000", "2000-12-31")]),
        ("auto", [("2026-11-28", "2026-11-28"), ("1999-01-02", "1999-01-02"), ("2000-12-31", "2000-12-31")]),
    ],
    ids=["pattern", "auto"],
)
def test_dateformat_loads_dates_as_sent(warehouse, make_server, dateformat, values):
    """DATEFORMAT with a pattern (month before day) and 'auto' into a date column."""
    table = warehouse.table("days", "id int, day date")
    name = warehouse.stream("days")
    server = make_server()
    c = server.client()
    create(c, name, redshift_config(table, options=f"JSON 'auto' DATEFORMAT '{dateformat}'"))
    put_all(c, name, [json.dumps({"id": i, "day": v}).encode() for i, (v, _) in enumerate(values)])
    wait_loaded(server, name, table, len(values))
    got = rows(f"SELECT id, to_char(day, 'YYYY-MM-DD') AS day FROM {table} ORDER BY id")
    assert got == [{"id": i, "day": want} for i, (_, want) in enumerate(values)]


def test_invalid_utf8_is_refused_or_replaced_with_acceptinvchars(warehouse, make_server):
    """A record with invalid UTF-8 is refused (its exact bytes in the error document)
    without ACCEPTINVCHARS; with ACCEPTINVCHARS AS '^' it loads, the invalid byte
    replaced by '^'."""
    strict = warehouse.table("utf8_strict", "id int, code text")
    lenient = warehouse.table("utf8_lenient", "id int, code text")
    s_strict, s_lenient = warehouse.stream("utf8-strict"), warehouse.stream("utf8-lenient")
    server = make_server()
    c = server.client()
    create(c, s_strict, redshift_config(strict, options="JSON 'auto' MAXERROR 5", bucket="utf8-strict"))
    create(c, s_lenient, redshift_config(lenient, options="JSON 'auto' ACCEPTINVCHARS AS '^'", bucket="utf8-lenient"))
    records = [b'{"id": 1, "code": "fine"}', b'{"id": 2, "code": "a\xffb"}', b'{"id": 3, "code": "Zo\xc3\xab"}']
    since = time.time() * 1000
    put_all(c, s_strict, records)
    put_all(c, s_lenient, records)
    wait_loaded(server, s_strict, strict, 2)
    wait_loaded(server, s_lenient, lenient, 3)
    assert rows(f"SELECT id, code FROM {strict} ORDER BY id") == [{"id": 1, "code": "fine"}, {"id": 3, "code": "Zoë"}]
    assert rows(f"SELECT id, code FROM {lenient} ORDER BY id") == [{"id": 1, "code": "fine"}, {"id": 2, "code": "a^b"}, {"id": 3, "code": "Zoë"}]
    docs = wait(lambda: error_documents(server, "utf8-strict"), "the error document", server, s_strict)
    assert len(docs) == 1, docs
    assert_error_document(docs[0], since)
    assert same_record(raw_data(docs[0]), records[1]), raw_data(docs[0])
    assert error_documents(server, "utf8-lenient") == []


def test_s3_backup_copies_every_staged_object(warehouse, make_server):
    """S3BackupMode Enabled: besides loading, each staged object is copied to the
    backup bucket under its prefix, in its own compression (GZIP here, staging being
    UNCOMPRESSED); the backup holds every record put."""
    table = warehouse.table("backed", "id int")
    name = warehouse.stream("backed")
    server = make_server()
    c = server.client()
    backup = {"RoleARN": "arn:aws:iam::123456789012:role/firehose", "BucketARN": "arn:aws:s3:::backup-copies", "Prefix": "copies/", "CompressionFormat": "GZIP"}
    create(c, name, redshift_config(table, bucket="backed-staging", S3BackupMode="Enabled", S3BackupConfiguration=backup))
    data = [json.dumps({"id": i}).encode() for i in range(120)]
    put_all(c, name, data)
    wait_loaded(server, name, table, 120)
    copies = server.objects("backup-copies")
    assert copies, "nothing in the backup bucket"
    root = server.lake / "backup-copies"
    for p in copies:
        assert str(p.relative_to(root)).startswith("copies/"), p
        assert p.read_bytes()[:2] == GZIP_MAGIC, p
    lines = b"".join(gzip.decompress(p.read_bytes()) for p in copies).splitlines()
    assert sorted(lines) == sorted(data)


# --- compressed staging --------------------------------------------------------


@pytest.mark.parametrize("fmt,magic", [("GZIP", GZIP_MAGIC), ("ZSTD", ZSTD_MAGIC)], ids=["gzip", "zstd"])
def test_compressed_staging_is_loaded(warehouse, make_server, fmt, magic):
    """CompressionFormat GZIP (ZSTD) with CopyOptions JSON 'auto' GZIP (ZSTD): the staged
    objects are compressed so (their magic bytes; GZIP ones decompress to the records)
    and every row lands."""
    table = warehouse.table("zipped", "id int, payload text")
    name = warehouse.stream("zipped")
    server = make_server()
    c = server.client()
    create(c, name, redshift_config(table, options=f"JSON 'auto' {fmt}", compression=fmt, bucket="zipped", prefix="z/"))
    sent = [{"id": i, "payload": "x" * (i % 50) + f"-{i}"} for i in range(300)]
    data = [json.dumps(r).encode() for r in sent]
    put_all(c, name, data)
    wait_loaded(server, name, table, 300)
    assert rows(f"SELECT id, payload FROM {table} ORDER BY id") == sent
    objects = staged(server, "zipped", "z/")
    assert objects, server.keys("zipped")
    for p in objects:
        assert p.read_bytes()[:4].startswith(magic), f"{p} is not {fmt}: {p.read_bytes()[:8]!r}"
    if fmt == "GZIP":
        lines = b"".join(gzip.decompress(p.read_bytes()) for p in objects).splitlines()
        assert sorted(lines) == sorted(data)


# --- refused rows ------------------------------------------------------------


def test_refused_rows_go_alone_to_the_error_output(warehouse, make_server):
    """Among 60 good records, five PostgreSQL or the options refuse (not JSON, not an
    object, a string in an int column, too long for varchar(5), NULL into NOT NULL):
    the 60 land, each refused record is once in a redshift-failed error document with
    its raw bytes, and the counts in /-/streams, /-/metrics and the ledger add up."""
    table = warehouse.table("strict", "id int NOT NULL, code varchar(5), qty int")
    name = warehouse.stream("strict")
    server = make_server()
    c = server.client()
    create(c, name, redshift_config(table, options="JSON 'auto' MAXERROR 10", bucket="strict"))
    good = [{"id": i, "code": f"ok{i % 100}", "qty": i * 3} for i in range(60)]
    bad = [
        b"this is not json",  # (one with a brace inside: test_a_malformed_record_is_refused_whole_and_loads_nothing)
        b"[1, 2, 3]",
        json.dumps({"id": 9001, "code": "int", "qty": "lots"}).encode(),
        json.dumps({"id": 9002, "code": "toolong", "qty": 1}).encode(),
        json.dumps({"id": None, "code": "nul", "qty": 2}).encode(),
    ]
    g = [json.dumps(r).encode() for r in good]
    since = time.time() * 1000
    put_all(c, name, g[:20] + bad[:2] + g[20:40] + bad[2:] + g[40:])

    w = wait_loaded(server, name, table, 60)
    assert rows(f"SELECT id, code, qty FROM {table} ORDER BY id") == good

    docs = wait(lambda: len(error_documents(server, "strict")) >= 5 and error_documents(server, "strict"), "5 error documents", server, name)
    for d in docs:
        assert_error_document(d, since)
    raws = [raw_data(d) for d in docs]
    assert len(raws) == 5, raws
    for b in bad:
        assert sum(same_record(r, b) for r in raws) == 1, f"{b!r} is not exactly once among the error documents: {raws}"

    assert rejected_total(w) == 5, w
    by_metric = metric_values(server, "hydrant_warehouse_rows_rejected_total", name)
    assert by_metric == {k: float(v) for k, v in w["rows_rejected"].items()}, (by_metric, w["rows_rejected"])
    assert metric_values(server, "hydrant_warehouse_rows_loaded_total", name) == {"": 60}
    assert w["manifests_failed"] == 0, w
    assert_ledger(name, w, 60, rejected_expected=5)


def test_a_malformed_record_is_refused_whole_and_loads_nothing(warehouse, make_server):
    """One record a line (AppendDelimiterToRecord): a record that is not valid JSON is
    refused as a whole, in one error document holding exactly its bytes, even when it
    contains '{' or a valid JSON object nested inside it; no row that was not sent
    (such as that nested object's) appears in the table."""
    table = warehouse.table("malformed", "id int, qty int")
    name = warehouse.stream("malformed")
    server = make_server()
    c = server.client()
    create(c, name, redshift_config(table, options="JSON 'auto' MAXERROR 10", bucket="malformed"))
    good = [{"id": i, "qty": i} for i in range(10)]
    bad = [
        b'{"id": 500, "qty": 5',  # cut short
        b'{"id": 501, "qty": oops, "extra": {"id": 7777, "qty": 7777}}',  # bad value, then a nested object
        b"not json { at all",  # a brace in the middle
    ]
    since = time.time() * 1000
    g = [json.dumps(r).encode() for r in good]
    put_all(c, name, g[:3] + bad[:1] + g[3:6] + bad[1:2] + g[6:9] + bad[2:] + g[9:])
    wait(lambda: count(table) >= 10, "10 rows", server, name)
    wait(lambda: settled(server, name), f"{name} to settle", server, name)
    assert rows(f"SELECT id, qty FROM {table} ORDER BY id") == good
    docs = wait(lambda: error_documents(server, "malformed"), "the error documents", server, name)
    for d in docs:
        assert_error_document(d, since)
    raws = [raw_data(d) for d in docs]
    for b in bad:
        assert sum(same_record(r, b) for r in raws) == 1, f"{b!r} is not exactly once among the error documents: {raws}"
    assert len(raws) == len(bad), f"{len(bad)} records were refused, yet there are {len(raws)} error documents: {raws}"
    assert rejected_total(wh(server, name)) == len(bad), wh(server, name)


def test_truncatecolumns_emptyasnull_blanksasnull(warehouse, make_server):
    """TRUNCATECOLUMNS cuts a too-long value to the column's length instead of refusing
    the row; EMPTYASNULL and BLANKSASNULL load '' and '   ' as NULL."""
    table = warehouse.table("lenient", "id int, code varchar(5)")
    name = warehouse.stream("lenient")
    server = make_server()
    c = server.client()
    create(c, name, redshift_config(table, options="JSON 'auto' TRUNCATECOLUMNS EMPTYASNULL BLANKSASNULL"))
    sent = [(1, "toolong", "toolo"), (2, "", None), (3, "   ", None), (4, "fits", "fits"), (5, "Zoë東京🚀x", "Zoë東京")]
    put_all(c, name, [json.dumps({"id": i, "code": v}).encode() for i, v, _ in sent])
    w = wait_loaded(server, name, table, len(sent))
    assert rows(f"SELECT id, code FROM {table} ORDER BY id") == [{"id": i, "code": want} for i, _, want in sent]
    assert rejected_total(w) == 0, w


def test_past_maxerror_nothing_of_the_object_loads(warehouse, make_server):
    """An object with more refused rows than MAXERROR loads nothing: its refused rows go
    to the error output, and a Redshift manifest naming the staged object goes beside
    them (errors/redshift-failed/….manifest). The stream goes on: the next object loads."""
    table = warehouse.table("bounded", "id int NOT NULL, qty int")
    name = warehouse.stream("bounded")
    server = make_server()
    c = server.client()
    create(c, name, redshift_config(table, options="JSON 'auto' MAXERROR 2", bucket="bounded", RetryOptions={"DurationInSeconds": 0}))
    first_good = [json.dumps({"id": i, "qty": i}).encode() for i in range(1, 11)]
    first_bad = [json.dumps({"id": 100 + k, "qty": f"not a number {k}"}).encode() for k in range(3)]
    first = first_good[:4] + first_bad[:1] + first_good[4:8] + first_bad[1:] + first_good[8:]
    put_all(c, name, first)

    def manifest():
        return [p for p in error_objects(server, "bounded") if p.name.endswith(".manifest")]

    found = wait(manifest, f"a manifest under {FAILED_PREFIX}", server, name)
    assert len(found) == 1, found
    doc = json.loads(found[0].read_bytes())
    assert len(doc["entries"]) == 1, doc
    e = doc["entries"][0]
    assert e["mandatory"] is True, doc
    m = re.fullmatch(r"s3://bounded/(.+)", e["url"])
    assert m, e["url"]
    failed_key = m.group(1)
    obj = server.lake / "bounded" / failed_key
    assert obj.is_file(), f"the manifest names {e['url']}, which is not in the bucket: {server.keys('bounded')}"
    assert sorted(obj.read_bytes().splitlines()) == sorted(first)

    w = wait(lambda: wh(server, name)["manifests_failed"] >= 1 and wh(server, name), "manifests_failed", server, name)
    assert w["manifests_failed"] == 1, w
    assert "MAXERROR" in last_error(w), w
    assert count(table) == 0

    docs = wait(lambda: len(error_documents(server, "bounded")) >= 3 and error_documents(server, "bounded"), "the refused rows' error documents", server, name)
    raws = [raw_data(d) for d in docs]
    assert len(raws) == 3, raws
    for b in first_bad:
        assert sum(same_record(r, b) for r in raws) == 1, (b, raws)

    second = [json.dumps({"id": i, "qty": i}).encode() for i in range(21, 26)]
    put_all(c, name, second)
    w = wait_loaded(server, name, table, 5)
    assert [r["id"] for r in rows(f"SELECT id FROM {table} ORDER BY id")] == list(range(21, 26))
    led = assert_ledger(name, w, 5)
    assert not any(failed_key in k for k in led["keys"]), f"the failed object is in the ledger: {led}"
    assert w["manifests_failed"] == 1, w


# --- a missing table or column -----------------------------------------------


def test_missing_table_is_named_then_loads_once_created(warehouse, make_server):
    """Into a table that does not exist: the stream's last error names the table and
    nothing is lost; once the table is created the records load, once."""
    table = f"{warehouse.schema}.arrives_later"
    name = warehouse.stream("later")
    server = make_server()
    c = server.client()
    create(c, name, redshift_config(table))
    put_all(c, name, [json.dumps({"id": i}).encode() for i in range(3)])

    def error():
        return last_error(wh(server, name)) or None

    message = wait(error, "the missing table to be reported", server, name)
    assert "arrives_later" in message, message
    psql(f"CREATE TABLE {table} (id int)")
    w = wait_loaded(server, name, table, 3, timeout=120)
    assert sorted(r["id"] for r in rows(f"SELECT id FROM {table}")) == [0, 1, 2]
    assert_ledger(name, w, 3)


def test_missing_column_is_named_then_loads_once_added(warehouse, make_server):
    """DataTableColumns naming a column the table lacks: the last error names the
    column; once it is added the records load, once."""
    table = warehouse.table("cols", "id int")
    name = warehouse.stream("cols")
    server = make_server()
    c = server.client()
    create(c, name, redshift_config(table, columns="id,added_later"))
    put_all(c, name, [json.dumps({"id": i, "added_later": f"v{i}"}).encode() for i in range(3)])

    def error():
        return last_error(wh(server, name)) or None

    message = wait(error, "the missing column to be reported", server, name)
    assert "added_later" in message, message
    psql(f"ALTER TABLE {table} ADD COLUMN added_later text")
    w = wait_loaded(server, name, table, 3, timeout=120)
    assert rows(f"SELECT id, added_later FROM {table} ORDER BY id") == [{"id": i, "added_later": f"v{i}"} for i in range(3)]
    assert_ledger(name, w, 3)


# --- exactly once across a crash -----------------------------------------------


def test_a_crash_loads_nothing_twice(warehouse, make_server):
    """hydrant SIGKILLed just after acknowledging records (possibly mid-load), then
    restarted: every acknowledged record is in the table exactly once, and the ledger's
    rows add up to the table's."""
    table = warehouse.table("crash", "id int")
    name = warehouse.stream("crash")
    server = make_server()
    c = server.client()
    create(c, name, redshift_config(table, bucket="crash"))
    put_all(c, name, [json.dumps({"id": i}).encode() for i in range(50)])
    wait_loaded(server, name, table, 50)
    put_all(c, name, [json.dumps({"id": i}).encode() for i in range(50, 150)])
    wait(lambda: count(table) > 50 or wh(server, name)["objects_staged"] > 1, "the second batch to be staged", server, name, interval=0.01)
    server.kill()
    server.start()
    wait_loaded(server, name, table, 150, strict=False)
    assert sorted(r["id"] for r in rows(f"SELECT id FROM {table}")) == list(range(150))
    led = ledger(name)
    assert led["rows"] == 150, led


# --- the tutorial ----------------------------------------------------------------

EVENTS = ["JOIN", "LEAVE", "OPEN_CHAT", "SUBSCRIBE", "SEND_MESSAGE"]
PRICES = {"JOIN": Decimal("0.00"), "LEAVE": Decimal("0"), "OPEN_CHAT": Decimal("0.10"), "SUBSCRIBE": Decimal("4.99"), "SEND_MESSAGE": Decimal("0.01")}


def make_event():
    return {
        "event_time": datetime.now().isoformat(),
        "event_name": random.choice(EVENTS),
        "user": round(random.random() * 100),
    }


def test_the_tutorial_end_to_end_into_postgresql(warehouse, make_server):
    """The tutorial's producer (json.dumps without a newline: the records sit back to
    back in the staged object) into events (event_time, event_name, "user") with
    JSON 'auto'; every event lands as sent, and psql's revenue by source equals the same
    figure computed from the events sent."""
    events = warehouse.table("events", 'event_time timestamp, event_name varchar(32), "user" int')
    prices = warehouse.table("prices", "event_name varchar(32), price numeric")
    psql(f"INSERT INTO {prices} VALUES " + ", ".join(f"('{k}', {v})" for k, v in PRICES.items()))
    name = warehouse.stream("my-event-staging")
    server = make_server()
    client = server.client()
    create(client, name, redshift_config(events, options="JSON 'auto'", bucket="data.staging.aws", prefix="events/my-event-staging/", delimiter=False))

    sent = []
    for _ in range(20):
        data = make_event()
        client.put_record(DeliveryStreamName=name, Record={"Data": json.dumps(data)})
        sent.append(data)
    batch = [make_event() for _ in range(100)]
    resp = client.put_record_batch(DeliveryStreamName=name, Records=[{"Data": json.dumps(e)} for e in batch])
    assert resp["FailedPutCount"] == 0
    sent += batch

    w = wait_loaded(server, name, events, len(sent))
    body = b"".join(p.read_bytes() for p in staged(server, "data.staging.aws", "events/my-event-staging/"))
    assert b"\n" not in body and len(body) == sum(len(json.dumps(e)) for e in sent), "records are not back to back in the staged objects"

    fmt = "YYYY-MM-DD HH24:MI:SS.US"
    got = rows(f'SELECT to_char(event_time, \'{fmt}\') AS event_time, event_name, "user" FROM {events}')
    key = lambda e: (e["event_time"], e["event_name"], e["user"])  # noqa: E731
    want = [{"event_time": datetime.fromisoformat(e["event_time"]).strftime("%Y-%m-%d %H:%M:%S.%f"), "event_name": e["event_name"], "user": e["user"]} for e in sent]
    assert sorted(got, key=key) == sorted(want, key=key)

    report = rows(
        f"SELECT e.event_name AS source, sum(p.price) AS revenue FROM {events} e JOIN {prices} p USING (event_name) GROUP BY 1 ORDER BY 1"
    )
    n = Counter(e["event_name"] for e in sent)
    assert report == [{"source": k, "revenue": PRICES[k] * n[k]} for k in sorted(n)]
    assert_ledger(name, w, len(sent), rejected_expected=0)
    assert metric_values(server, "hydrant_warehouse_rows_loaded_total", name) == {"": len(sent)}
