"""The lake as an analytical store: Parquet with a declared or inferred
schema, Hive-style partitions, and SQL over it, checked with real readers
(pyarrow, DuckDB) that must agree with hydrant's own answers.
"""

import base64
import json
import subprocess
from collections import Counter, defaultdict
from decimal import Decimal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import hydrant_bin, stream_config, wait_for

EVENTS = ["JOIN", "LEAVE", "OPEN_CHAT", "SUBSCRIBE", "SEND_MESSAGE"]

COLUMNS = [
    {"Name": "event_time", "Type": "timestamp"},
    {"Name": "event_name", "Type": "string"},
    {"Name": "user", "Type": "int"},
    {"Name": "amount", "Type": "decimal(10,2)"},
    {"Name": "tags", "Type": "array<string>"},
    {"Name": "customer", "Type": "struct<id:bigint,name:string>"},
]


CATALOG = f"""
glue_tables:
  analytics.events:
    columns: {json.dumps(COLUMNS)}
  analytics.anything:
    infer_from_data: true
"""


def parquet_stream(name="pq", bucket="pq-lake", table="events", partitioned=True, interval=900, compression="SNAPPY"):
    # As a Firehose user writes it: the schema is a (Glue) table reference.
    schema = {"DatabaseName": "analytics", "TableName": table, "RoleARN": "arn:aws:iam::123456789012:role/glue"}
    req = stream_config(
        name=name, bucket=bucket, interval=interval, size_mb=64, delimiter=False,
        prefix="events/event_name=!{partitionKeyFromQuery:event_name}/" if partitioned else "events/",
        ErrorOutputPrefix="errors/!{firehose:error-output-type}/",
        DataFormatConversionConfiguration={
            "Enabled": True,
            "SchemaConfiguration": schema,
            "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
            "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {"Compression": compression}}},
        },
    )
    if partitioned:
        req["ExtendedS3DestinationConfiguration"]["DynamicPartitioningConfiguration"] = {"Enabled": True}
        req["ExtendedS3DestinationConfiguration"]["ProcessingConfiguration"] = {"Enabled": True, "Processors": [
            {"Type": "MetadataExtraction", "Parameters": [
                {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{event_name: .event_name}"},
                {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]}]}
    return req


def event(i):
    return {
        "event_time": f"2026-11-24T13:{i % 60:02d}:{i % 59:02d}.{i % 1000:03d}",
        "event_name": EVENTS[i % 5],
        "user": i % 101,
        "amount": f"{(i * 37) % 10000 / 100:.2f}",
        "tags": [f"t{i % 3}", "x"],
        "customer": {"id": 1000 + i, "name": f"c{i}"},
        "ignored_extra": True,
    }


def query(server, sql, fmt="json"):
    r = subprocess.run([hydrant_bin(), "query", sql, "--endpoint", server.endpoint, "--format", fmt],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout) if fmt == "json" else r.stdout


def put_all(client, stream, records):
    for k in range(0, len(records), 500):
        r = client.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": json.dumps(x)} for x in records[k:k + 500]])
        assert r["FailedPutCount"] == 0


def test_parquet_partitions_read_the_same_in_pyarrow_duckdb_and_hydrant(make_server):
    server = make_server(CATALOG)
    c = server.client()
    c.create_delivery_stream(**parquet_stream())
    good = [event(i) for i in range(600)]
    bad = [dict(event(9001), user="not a number"), dict(event(9002), amount="12.3.4"), dict(event(9003), tags="not a list")]
    put_all(c, "pq", good[:300] + bad + good[300:])

    # Sealed by a clean stop; then read back by a fresh server on the same data.
    assert server.stop() == 0
    root = server.lake / "pq-lake"
    files = sorted(p for p in (root / "events").rglob("*") if p.is_file())
    assert {p.relative_to(root / "events").parts[0] for p in files} == {f"event_name={e}" for e in EVENTS}

    # pyarrow: types as declared, every good record once, statistics written.
    total = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        t = pq.ParquetFile(f).read()  # the file alone: its path also carries event_name
        assert t.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
        assert t.schema.field("amount").type == pa.decimal128(10, 2)
        assert t.schema.field("tags").type.value_type == pa.string()
        assert pa.types.is_struct(t.schema.field("customer").type)
        assert "ignored_extra" not in t.schema.names
        assert meta.row_group(0).column(0).statistics is not None
        assert meta.row_group(0).column(0).compression == "SNAPPY"
        total += t.num_rows
    assert total == 600
    ids = sorted(r["id"] for f in files for r in pq.ParquetFile(f).read().column("customer").to_pylist())
    assert ids == [1000 + i for i in range(600)]

    # The three bad records are in format-conversion-failed, with their reason.
    docs = [json.loads(l) for p in (root / "errors").rglob("*") if p.is_file() for l in p.read_bytes().splitlines()]
    assert all("format-conversion-failed" in str(p) for p in (root / "errors").rglob("*") if p.is_file())
    raws = sorted(json.loads(base64.b64decode(d["rawData"]))["customer"]["id"] for d in docs)
    assert raws == [10001, 10002, 10003]
    messages = " ".join(d["errorMessage"] for d in docs)
    assert "user" in messages and "amount" in messages and "tags" in messages

    expected = defaultdict(lambda: [0, Decimal("0")])
    for e in good:
        expected[e["event_name"]][0] += 1
        expected[e["event_name"]][1] += Decimal(e["amount"])

    con = duckdb.connect()
    duck = con.execute(
        f"SELECT event_name, count(*), sum(amount) FROM read_parquet('{root}/events/**/*', hive_partitioning=true) GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [(n, c, Decimal(s)) for n, c, s in duck] == [(n, v[0], v[1]) for n, v in sorted(expected.items())]

    server.start()
    mine = query(server, "SELECT event_name, count(*) AS n, sum(amount) AS total FROM pq GROUP BY event_name ORDER BY event_name")
    assert [r[0] for r in mine["rows"]] == sorted(expected)
    assert [(r[1], Decimal(str(r[2])).quantize(Decimal("0.01"))) for r in mine["rows"]] == [(v[0], v[1]) for _, v in sorted(expected.items())]
    # A filter on the partition column.
    only = query(server, "SELECT count(*) FROM pq WHERE event_name = 'JOIN'")
    assert only["rows"] == [[expected["JOIN"][0]]]


def test_json_streams_are_tables_and_a_query_sees_what_was_just_delivered(server):
    c = server.client()
    c.create_delivery_stream(**stream_config(name="my-events", bucket="json-lake", prefix="events/my-events/", interval=1, compression="GZIP"))
    records = [{"event_name": EVENTS[i % 5], "user": i % 7} for i in range(250)]
    put_all(c, "my-events", records)

    def counted():
        rows = query(server, "SELECT count(*) FROM my_events")["rows"]
        return rows == [[250]]

    wait_for(counted, timeout=15, what="250 records visible to SQL")
    by_name = query(server, 'SELECT event_name, count(*) FROM "my-events" GROUP BY 1 ORDER BY 1')
    assert by_name["rows"] == [[k, v] for k, v in sorted(Counter(r["event_name"] for r in records).items())]
    csv = query(server, "SELECT user, count(*) AS n FROM my_events GROUP BY user ORDER BY user", fmt="csv")
    assert csv.splitlines()[0] == "user,n"
    assert csv.splitlines()[1:] == [f"{u},{n}" for u, n in sorted(Counter(r["user"] for r in records).items())]
    table = query(server, "SELECT count(*) AS n FROM my_events", fmt="table")
    assert "| n   |" in table and "| 250 |" in table


@pytest.mark.parametrize("compression", ["UNCOMPRESSED", "GZIP", "ZSTD", "Snappy"])
def test_json_streams_of_every_compression_are_tables(server, compression):
    c = server.client()
    c.create_delivery_stream(**stream_config(name="z", bucket="z-lake", prefix="z/", interval=900, compression=compression))
    put_all(c, "z", [{"k": i % 3, "v": i} for i in range(300)])
    assert server.stop() == 0
    (obj,) = server.objects("z-lake")
    ext = {"UNCOMPRESSED": "", "GZIP": ".gz", "ZSTD": ".zst", "Snappy": ".snappy"}[compression]
    assert obj.name.endswith(ext) and (ext or "." not in obj.name)
    server.start()
    rows = query(server, "SELECT k, count(*), sum(v) FROM z GROUP BY k ORDER BY k")["rows"]
    assert rows == [[k, 100, sum(v for v in range(300) if v % 3 == k)] for k in range(3)]


def test_open_parquet_buffers_spill_columns_and_come_back_exact(make_server):
    """A Parquet buffer keeps about a mebibyte of columns in memory and spills
    the rest to tmp/ while it is open, even as its inferred schema widens
    (a new column, a new struct field, bigint to double): with 128 MB / 900 s
    hints its file is several MiB before any object is cut. A SIGKILL leaves
    it; the next start removes it and rebuilds the buffer from the log, and the
    one object read by pyarrow holds every record once, in order, with exact
    values in the final schema."""
    server = make_server(CATALOG)
    c = server.client()
    req = parquet_stream(name="spill", bucket="spill-lake", table="anything", partitioned=False)
    req["ExtendedS3DestinationConfiguration"]["BufferingHints"] = {"SizeInMBs": 128, "IntervalInSeconds": 900}
    c.create_delivery_stream(**req)
    n = 15_000
    first = [{"a": i, "s": {"x": i}, "pad": f"{i:0>200}"} for i in range(n)]
    later = [{"a": i + 0.5, "s": {"x": i, "y": f"q{i}"}, "b": f"b{i}", "pad": f"{i:x>200}"} for i in range(n)]
    put_all(c, "spill", first)
    put_all(c, "spill", later)
    tmp = server.data_dir / "tmp"
    sizes = lambda: {p.name: p.stat().st_size for p in tmp.glob("body-*")}
    before = wait_for(lambda: (s := sizes()) and sum(s.values()) > 3 * (1 << 20) and s,
                      timeout=60, what="the open Parquet buffer spilled to tmp/")
    assert server.objects("spill-lake") == [], "nothing is cut below the hints"
    server.kill()
    server.start()
    assert not set(sizes()) & set(before), "a start removes what the last run spilled"
    assert server.stop() == 0
    assert sizes() == {}, "a delivered object leaves nothing in tmp/"
    (f,) = server.objects("spill-lake")
    t = pq.read_table(f)
    assert t.schema.field("a").type == pa.float64(), t.schema
    assert t.schema.field("s").type == pa.struct([("x", pa.int64()), ("y", pa.string())]), t.schema
    assert t.num_rows == 2 * n
    assert t.column("a").to_pylist() == [float(r["a"]) for r in first + later]
    assert t.column("s").to_pylist() == [{"x": r["s"]["x"], "y": r["s"].get("y")} for r in first + later]
    assert t.column("b").to_pylist() == [r.get("b") for r in first + later]
    assert t.column("pad").to_pylist() == [r["pad"] for r in first + later]


def test_an_inferred_schema_grows_nullable_columns(make_server):
    server = make_server(CATALOG)
    c = server.client()
    c.create_delivery_stream(**parquet_stream(name="infer", bucket="infer-lake", table="anything", partitioned=False, interval=1))
    put_all(c, "infer", [{"a": i, "b": f"s{i}"} for i in range(10)])
    wait_for(lambda: len(server.objects("infer-lake")) == 1, what="the first object")
    put_all(c, "infer", [{"a": 10 + i, "b": "later", "c": 2.5} for i in range(5)] + [{"a": "conflict"}])
    wait_for(lambda: len([p for p in server.objects("infer-lake") if "events/" in str(p)]) == 2, what="the second object")
    second = sorted(p for p in server.objects("infer-lake") if "events/" in str(p))
    schemas = [pq.read_schema(p) for p in second]
    assert sorted(len(s.names) for s in schemas) == [2, 3]
    rows = query(server, "SELECT count(*), count(c), sum(a) FROM infer")["rows"]
    assert rows == [[15, 5, sum(range(15))]]
    errs = [p for p in server.objects("infer-lake") if "format-conversion-failed" in str(p)]
    assert len(errs) == 1 and b"conflict" in base64.b64decode(json.loads(errs[0].read_bytes().splitlines()[0])["rawData"])


def test_a_schema_can_be_declared_inline_in_the_config_file(make_server):
    stream = parquet_stream(name="inline", bucket="inline-lake", partitioned=False, interval=900)
    stream["ExtendedS3DestinationConfiguration"]["DataFormatConversionConfiguration"]["SchemaConfiguration"] = {
        "Columns": [{"Name": "n", "Type": "bigint"}, {"Name": "when", "Type": "date"}]}
    server = make_server(f"delivery_streams: [{json.dumps(stream)}]")
    put_all(server.client(), "inline", [{"n": i, "when": "2026-11-24"} for i in range(7)])
    assert server.stop() == 0
    (f,) = server.objects("inline-lake")
    t = pq.read_table(f)
    assert t.schema.field("n").type == pa.int64() and t.schema.field("when").type == pa.date32()
    assert t.column("n").to_pylist() == list(range(7))


def test_describe_shows_partitioning_extraction_and_conversion_as_set(make_server):
    """DescribeDeliveryStream returns what CreateDeliveryStream set: dynamic
    partitioning, the MetadataExtraction processor with its parameters, and
    the format conversion with its schema, serializer and deserializer; and
    the same for a stream declared in the config file."""
    req = parquet_stream(name="described", bucket="described-lake")
    declared = parquet_stream(name="declared-described", bucket="described-lake")
    server = make_server(CATALOG + f"delivery_streams:\n  - {json.dumps(declared)}\n")
    c = server.client()
    c.create_delivery_stream(**req)
    for r in (req, declared):
        d = c.describe_delivery_stream(DeliveryStreamName=r["DeliveryStreamName"])["DeliveryStreamDescription"]
        ext = d["Destinations"][0]["ExtendedS3DestinationDescription"]
        given = r["ExtendedS3DestinationConfiguration"]
        assert ext["DynamicPartitioningConfiguration"] == {"Enabled": True}, ext
        assert ext["DataFormatConversionConfiguration"] == given["DataFormatConversionConfiguration"], ext
        assert ext["ProcessingConfiguration"] == given["ProcessingConfiguration"], ext
        assert ext["Prefix"] == given["Prefix"] and ext["ErrorOutputPrefix"] == given["ErrorOutputPrefix"]


def test_an_unknown_catalog_table_is_refused_by_name(make_server):
    server = make_server(CATALOG)
    c = server.client()
    with pytest.raises(c.exceptions.InvalidArgumentException) as e:
        c.create_delivery_stream(**parquet_stream(table="missing"))
    assert "analytics.missing" in e.value.response["Error"]["Message"]


def test_query_errors_are_clear(server):
    for sql, text in [("SELEC 1", "SELEC"), ("SELECT * FROM nope", "nope"), ("", "SQL")]:
        r = subprocess.run([hydrant_bin(), "query", sql, "--endpoint", server.endpoint], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0
        assert text in r.stderr, r.stderr
