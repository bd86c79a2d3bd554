"""The Firehose API as boto3 (and a raw HTTP client) sees it, against a real
hydrant process, with every check of delivered data made by reading the lake.
"""

import base64
import gzip
import http.client
import json
import re
import threading
import time
from datetime import datetime, timezone

import botocore.exceptions
import pytest

from conftest import stream_config, wait_for

ROLE = "arn:aws:iam::123456789012:role/firehose"
JSON_11 = "application/x-amz-json-1.1"
TARGET = "Firehose_20150804."
MAX_RECORD = 1_024_000
MAX_BATCH_BYTES = 4 * 1024 * 1024


# --- helpers -----------------------------------------------------------------


def object_bytes(path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def lake_records(server, bucket) -> list[bytes]:
    """Records in a bucket written with AppendDelimiterToRecord, object by object."""
    out = []
    for p in server.objects(bucket):
        data = object_bytes(p)
        assert data.endswith(b"\n"), f"{p} does not end with the record delimiter: {data[-40:]!r}"
        out.extend(data[:-1].split(b"\n"))
    return out


def stop_cleanly(server):
    rc = server.stop()
    assert rc == 0, f"hydrant exited {rc} on SIGTERM:\n{server.log()[-3000:]}"


def error_code(exc) -> str:
    return exc.response["Error"]["Code"]


def raw(server, target, body, content_type=JSON_11):
    """POST / with exactly the given headers; returns (status, parsed JSON body, headers)."""
    headers = {}
    if target is not None:
        headers["X-Amz-Target"] = target
    if content_type is not None:
        headers["Content-Type"] = content_type
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/", body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else None, dict(r.getheaders())
    finally:
        conn.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def names(client, **kw) -> list[str]:
    return client.list_delivery_streams(**kw)["DeliveryStreamNames"]


# --- CreateDeliveryStream and DescribeDeliveryStream -------------------------


def test_create_extended_stream_and_describe_it(server):
    """CreateDeliveryStream returns the stream's ARN; DescribeDeliveryStream shows an ACTIVE
    DirectPut stream, version 1, created just now, whose destination echoes the RoleARN,
    bucket, prefix, buffering hints, compression and delimiter processor that were asked for."""
    c = server.client()
    before = time.time()
    req = stream_config("orders", bucket="orders-bucket", prefix="raw/orders/", size_mb=3, interval=60)
    arn = c.create_delivery_stream(**req)["DeliveryStreamARN"]
    after = time.time()
    assert re.fullmatch(r"arn:aws:firehose:[a-z0-9-]+:\d{12}:deliverystream/orders", arn), arn

    d = c.describe_delivery_stream(DeliveryStreamName="orders")["DeliveryStreamDescription"]
    assert d["DeliveryStreamName"] == "orders"
    assert d["DeliveryStreamARN"] == arn
    assert d["DeliveryStreamStatus"] == "ACTIVE"
    assert d["DeliveryStreamType"] == "DirectPut"
    assert d["VersionId"] == "1"
    assert before - 1 <= d["CreateTimestamp"].timestamp() <= after + 1
    assert d["HasMoreDestinations"] is False
    assert len(d["Destinations"]) == 1
    dest = d["Destinations"][0]
    assert dest["DestinationId"]
    ext = dest["ExtendedS3DestinationDescription"]
    assert ext["RoleARN"] == ROLE
    assert ext["BucketARN"] == "arn:aws:s3:::orders-bucket"
    assert ext["Prefix"] == "raw/orders/"
    assert ext["BufferingHints"] == {"SizeInMBs": 3, "IntervalInSeconds": 60}
    assert ext["CompressionFormat"] == "UNCOMPRESSED"
    assert ext["ProcessingConfiguration"]["Enabled"] is True
    assert [p["Type"] for p in ext["ProcessingConfiguration"]["Processors"]] == ["AppendDelimiterToRecord"]
    assert dest["S3DestinationDescription"]["BucketARN"] == "arn:aws:s3:::orders-bucket"


def test_buffering_hints_default_to_5_mb_and_300_seconds(server):
    """With no BufferingHints the stream buffers 5 MB / 300 s, as Firehose does; a partial
    BufferingHints takes the default for the field it leaves out."""
    c = server.client()
    req = stream_config("defaults")
    del req["ExtendedS3DestinationConfiguration"]["BufferingHints"]
    c.create_delivery_stream(**req)
    d = c.describe_delivery_stream(DeliveryStreamName="defaults")["DeliveryStreamDescription"]
    dest = d["Destinations"][0]
    assert dest["ExtendedS3DestinationDescription"]["BufferingHints"] == {"SizeInMBs": 5, "IntervalInSeconds": 300}
    assert dest["S3DestinationDescription"]["BufferingHints"] == {"SizeInMBs": 5, "IntervalInSeconds": 300}

    req = stream_config("only-size")
    req["ExtendedS3DestinationConfiguration"]["BufferingHints"] = {"SizeInMBs": 2}
    c.create_delivery_stream(**req)
    d = c.describe_delivery_stream(DeliveryStreamName="only-size")["DeliveryStreamDescription"]
    assert d["Destinations"][0]["ExtendedS3DestinationDescription"]["BufferingHints"] == {
        "SizeInMBs": 2,
        "IntervalInSeconds": 300,
    }


def test_s3_destination_configuration_writes_records_back_to_back(server):
    """A stream made with the plain S3DestinationConfiguration is described with those
    settings, and its objects hold the records' exact bytes concatenated, with nothing
    between them (binary data included)."""
    c = server.client()
    c.create_delivery_stream(
        DeliveryStreamName="plain",
        S3DestinationConfiguration={
            "RoleARN": ROLE,
            "BucketARN": "arn:aws:s3:::plain-bucket",
            "Prefix": "p/",
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 300},
            "CompressionFormat": "UNCOMPRESSED",
        },
    )
    d = c.describe_delivery_stream(DeliveryStreamName="plain")["DeliveryStreamDescription"]
    s3 = d["Destinations"][0]["S3DestinationDescription"]
    assert s3["RoleARN"] == ROLE
    assert s3["BucketARN"] == "arn:aws:s3:::plain-bucket"
    assert s3["Prefix"] == "p/"
    assert s3["BufferingHints"] == {"SizeInMBs": 1, "IntervalInSeconds": 300}
    assert s3["CompressionFormat"] == "UNCOMPRESSED"

    records = [b"alpha", bytes(range(256)), b"", b"{\"k\": 1}\n", b"omega"]
    for r in records[:2]:
        c.put_record(DeliveryStreamName="plain", Record={"Data": r})
    c.put_record_batch(DeliveryStreamName="plain", Records=[{"Data": r} for r in records[2:]])
    stop_cleanly(server)
    objects = server.objects("plain-bucket")
    assert len(objects) == 1, server.keys("plain-bucket")
    assert objects[0].read_bytes() == b"".join(records)
    assert server.keys("plain-bucket")[0].startswith("p/")


def test_gzip_compression_delivers_gzip_objects(server):
    """CompressionFormat GZIP is described back, objects get the .gz extension, and they
    decompress to the records that were put."""
    c = server.client()
    c.create_delivery_stream(**stream_config("zipped", bucket="gz-bucket", compression="GZIP"))
    d = c.describe_delivery_stream(DeliveryStreamName="zipped")["DeliveryStreamDescription"]
    assert d["Destinations"][0]["ExtendedS3DestinationDescription"]["CompressionFormat"] == "GZIP"
    records = [f'{{"n": {i}, "pad": "{"x" * 50}"}}'.encode() for i in range(200)]
    c.put_record_batch(DeliveryStreamName="zipped", Records=[{"Data": r} for r in records])
    wait_for(lambda: server.objects("gz-bucket"), what="a GZIP object")
    keys = server.keys("gz-bucket")
    assert all(k.endswith(".gz") for k in keys), keys
    for p in server.objects("gz-bucket"):
        assert p.read_bytes()[:2] == b"\x1f\x8b", f"{p} is not gzip"
    stop_cleanly(server)
    assert sorted(lake_records(server, "gz-bucket")) == sorted(records)


def test_file_extension_names_objects(server):
    """FileExtension is described back and every delivered object's key ends with it."""
    c = server.client()
    c.create_delivery_stream(**stream_config("ext", bucket="ext-bucket", FileExtension=".jsonl"))
    d = c.describe_delivery_stream(DeliveryStreamName="ext")["DeliveryStreamDescription"]
    assert d["Destinations"][0]["ExtendedS3DestinationDescription"]["FileExtension"] == ".jsonl"
    c.put_record(DeliveryStreamName="ext", Record={"Data": b'{"a": 1}'})
    stop_cleanly(server)
    keys = server.keys("ext-bucket")
    assert len(keys) == 1 and keys[0].endswith(".jsonl"), keys
    assert lake_records(server, "ext-bucket") == [b'{"a": 1}']


def test_harmless_disabled_options_are_accepted(server):
    """Options that change nothing when off (CloudWatch logging disabled, S3 backup
    disabled, NoEncryption, a disabled processing configuration) are accepted."""
    c = server.client()
    req = stream_config(
        "harmless",
        delimiter=False,
        CloudWatchLoggingOptions={"Enabled": False},
        S3BackupMode="Disabled",
        EncryptionConfiguration={"NoEncryptionConfig": "NoEncryption"},
        ProcessingConfiguration={"Enabled": False},
    )
    arn = c.create_delivery_stream(**req)["DeliveryStreamARN"]
    assert arn.endswith("/harmless")
    ext = c.describe_delivery_stream(DeliveryStreamName="harmless")["DeliveryStreamDescription"]["Destinations"][0][
        "ExtendedS3DestinationDescription"
    ]
    assert ext["CloudWatchLoggingOptions"]["Enabled"] is False
    assert ext["S3BackupMode"] == "Disabled"
    assert ext["EncryptionConfiguration"] == {"NoEncryptionConfig": "NoEncryption"}
    assert ext["ProcessingConfiguration"]["Enabled"] is False


def _dest(req):
    return req["ExtendedS3DestinationConfiguration"]


def _set_dest(**fields):
    def mutate(req):
        _dest(req).update(fields)
        return req

    return mutate


def _set_top(**fields):
    def mutate(req):
        req.update(fields)
        return req

    return mutate


def _http_endpoint_only(req):
    return {
        "DeliveryStreamName": req["DeliveryStreamName"],
        "DeliveryStreamType": "DirectPut",
        "HttpEndpointDestinationConfiguration": {
            "EndpointConfiguration": {"Url": "https://example.com/ingest", "Name": "ex"},
            "S3Configuration": {"RoleARN": ROLE, "BucketARN": "arn:aws:s3:::backup-bucket"},
        },
    }


UNSUPPORTED = [
    (
        "data-format-conversion",
        _set_dest(
            DataFormatConversionConfiguration={
                "Enabled": True,
                "SchemaConfiguration": {"RoleARN": ROLE, "DatabaseName": "db", "TableName": "t"},
                "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
                "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {}}},
            }
        ),
        "DataFormatConversionConfiguration",
    ),
    (
        "dynamic-partitioning",
        _set_dest(DynamicPartitioningConfiguration={"Enabled": True}),
        "DynamicPartitioningConfiguration",
    ),
    ("tags", _set_top(Tags=[{"Key": "team", "Value": "data"}]), "Tags"),
    (
        "kms-destination-encryption",
        _set_dest(
            EncryptionConfiguration={"KMSEncryptionConfig": {"AWSKMSKeyARN": "arn:aws:kms:eu-west-1:123456789012:key/k"}}
        ),
        "KMS",
    ),
    (
        "server-side-encryption",
        _set_top(DeliveryStreamEncryptionConfigurationInput={"KeyType": "AWS_OWNED_CMK"}),
        "DeliveryStreamEncryptionConfigurationInput",
    ),
    (
        "cloudwatch-enabled",
        _set_dest(CloudWatchLoggingOptions={"Enabled": True, "LogGroupName": "/aws/firehose/s", "LogStreamName": "S3Delivery"}),
        "CloudWatchLoggingOptions",
    ),
    (
        "s3-backup-enabled",
        _set_dest(S3BackupMode="Enabled", S3BackupConfiguration={"RoleARN": ROLE, "BucketARN": "arn:aws:s3:::backup-bucket"}),
        "S3Backup",
    ),
    (
        "lambda-processor",
        _set_dest(
            ProcessingConfiguration={
                "Enabled": True,
                "Processors": [
                    {
                        "Type": "Lambda",
                        "Parameters": [
                            {"ParameterName": "LambdaArn", "ParameterValue": "arn:aws:lambda:eu-west-1:123456789012:function:f"}
                        ],
                    }
                ],
            }
        ),
        "Lambda",
    ),
    ("zip", _set_dest(CompressionFormat="ZIP"), "ZIP"),
    ("hadoop-snappy", _set_dest(CompressionFormat="HADOOP_SNAPPY"), "HADOOP_SNAPPY"),
    ("custom-time-zone", _set_dest(CustomTimeZone="Europe/Paris"), "CustomTimeZone"),
    (
        "kinesis-source",
        _set_top(
            DeliveryStreamType="KinesisStreamAsSource",
            KinesisStreamSourceConfiguration={"KinesisStreamARN": "arn:aws:kinesis:eu-west-1:123456789012:stream/src", "RoleARN": ROLE},
        ),
        "KinesisStream",
    ),
    ("http-endpoint-destination", _http_endpoint_only, "HttpEndpointDestinationConfiguration"),
]


@pytest.mark.parametrize("mutate,named", [(m, n) for _, m, n in UNSUPPORTED], ids=[i for i, _, _ in UNSUPPORTED])
def test_unsupported_option_is_rejected_by_name(server, mutate, named):
    """An option hydrant does not implement is refused with InvalidArgumentException whose
    message names it, and no stream is left behind."""
    c = server.client()
    req = mutate(stream_config("refused"))
    with pytest.raises(c.exceptions.InvalidArgumentException) as e:
        c.create_delivery_stream(**req)
    assert named in e.value.response["Error"]["Message"], e.value.response["Error"]
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert names(c) == []
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.describe_delivery_stream(DeliveryStreamName="refused")


INVALID_VALUES = [
    ("bad-name", _set_top(DeliveryStreamName="bad name!"), "deliveryStreamName"),
    ("name-too-long", _set_top(DeliveryStreamName="n" * 65), "deliveryStreamName"),
    ("size-129", _set_dest(BufferingHints={"SizeInMBs": 129, "IntervalInSeconds": 60}), "SizeInMBs"),
    ("size-0", _set_dest(BufferingHints={"SizeInMBs": 0, "IntervalInSeconds": 60}), "SizeInMBs"),
    ("interval-901", _set_dest(BufferingHints={"SizeInMBs": 1, "IntervalInSeconds": 901}), "IntervalInSeconds"),
    ("compression-lz4", _set_dest(CompressionFormat="LZ4"), "LZ4"),
    ("file-extension-without-dot", _set_dest(FileExtension="json"), "FileExtension"),
]


@pytest.mark.parametrize("mutate,named", [(m, n) for _, m, n in INVALID_VALUES], ids=[i for i, _, _ in INVALID_VALUES])
def test_value_outside_the_api_model_is_a_validation_error(server, mutate, named):
    """A value that breaks the API model's constraints gets ValidationException (HTTP 400)
    naming the field, and no stream is created (sent with boto3's own checks off, which
    would catch some of them first)."""
    c = server.client(parameter_validation=False)
    req = mutate(stream_config("checked"))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.create_delivery_stream(**req)
    assert error_code(e.value) == "ValidationException", e.value.response["Error"]
    assert named in e.value.response["Error"]["Message"]
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert names(c) == []


def test_bucket_arn_that_is_not_an_s3_bucket_is_rejected(server):
    """A BucketARN that is not arn:aws:s3:::<valid bucket> is refused with
    InvalidArgumentException naming BucketARN."""
    c = server.client()
    for arn in ["arn:aws:s3:::Bad_Bucket", "arn:aws:sqs:eu-west-1:123456789012:q", "my-bucket"]:
        with pytest.raises(c.exceptions.InvalidArgumentException) as e:
            c.create_delivery_stream(**stream_config("b", BucketARN=arn))
        assert "BucketARN" in e.value.response["Error"]["Message"]
    assert names(c) == []


def test_create_with_missing_or_mistyped_fields(server):
    """Requests boto3 would refuse client-side: a missing DeliveryStreamName or RoleARN is a
    ValidationException, a string where a number belongs is a SerializationException."""
    c = server.client(parameter_validation=False)
    req = stream_config("x")
    del req["DeliveryStreamName"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.create_delivery_stream(**req)
    assert error_code(e.value) == "ValidationException"
    assert "DeliveryStreamName" in e.value.response["Error"]["Message"]

    req = stream_config("x")
    del _dest(req)["RoleARN"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.create_delivery_stream(**req)
    assert error_code(e.value) == "ValidationException"
    assert "RoleARN" in e.value.response["Error"]["Message"]

    req = stream_config("x")
    _dest(req)["BufferingHints"] = {"SizeInMBs": "big", "IntervalInSeconds": 60}
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.create_delivery_stream(**req)
    assert error_code(e.value) == "SerializationException"
    assert names(server.client()) == []


def test_prefix_expressions_need_an_error_output_prefix(server):
    """A Prefix with expressions and no ErrorOutputPrefix is InvalidArgumentException, as is an
    ErrorOutputPrefix with expressions but no !{firehose:error-output-type}, or a Prefix using
    dynamic-partitioning keys; with a proper ErrorOutputPrefix the stream is created and
    both prefixes are described back."""
    c = server.client()
    cases = [
        ({"Prefix": "logs/!{timestamp:yyyy/MM/dd}/"}, "ErrorOutputPrefix"),
        ({"Prefix": "logs/!{timestamp:yyyy}/", "ErrorOutputPrefix": "errors/!{timestamp:yyyy}/"}, "error-output-type"),
        (
            {"Prefix": "logs/!{partitionKeyFromQuery:customer}/", "ErrorOutputPrefix": "errors/!{firehose:error-output-type}/"},
            "partitionKeyFromQuery",
        ),
    ]
    for fields, named in cases:
        with pytest.raises(c.exceptions.InvalidArgumentException) as e:
            c.create_delivery_stream(**stream_config("pfx", **fields))
        assert named in e.value.response["Error"]["Message"], (fields, e.value.response["Error"])
    assert names(c) == []

    c.create_delivery_stream(
        **stream_config(
            "pfx",
            Prefix="logs/!{timestamp:yyyy/MM/dd}/",
            ErrorOutputPrefix="errors/!{firehose:error-output-type}/!{timestamp:yyyy}/",
        )
    )
    ext = c.describe_delivery_stream(DeliveryStreamName="pfx")["DeliveryStreamDescription"]["Destinations"][0][
        "ExtendedS3DestinationDescription"
    ]
    assert ext["Prefix"] == "logs/!{timestamp:yyyy/MM/dd}/"
    assert ext["ErrorOutputPrefix"] == "errors/!{firehose:error-output-type}/!{timestamp:yyyy}/"


NAME_RE = r"(?P<stream>[A-Za-z0-9_.-]+)-1-(?P<ts>\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})-(?P<id>[0-9a-f-]{36})"


def _key_time(ts: str) -> datetime:
    return datetime.strptime(ts, "%Y-%m-%d-%H-%M-%S").replace(tzinfo=timezone.utc)


def test_object_keys_follow_firehose_naming(server):
    """A plain Prefix gets Firehose's hourly YYYY/MM/DD/HH/ folders and the object name is
    <stream>-<version>-YYYY-MM-DD-HH-MM-SS-<id>, timed at the records' arrival (UTC)."""
    c = server.client()
    c.create_delivery_stream(**stream_config("named", bucket="named-bucket", prefix="events/", interval=300))
    before = datetime.now(timezone.utc).replace(microsecond=0)
    c.put_record(DeliveryStreamName="named", Record={"Data": b"one"})
    after = datetime.now(timezone.utc)
    stop_cleanly(server)
    keys = server.keys("named-bucket")
    assert len(keys) == 1, keys
    m = re.fullmatch(r"events/(\d{4})/(\d{2})/(\d{2})/(\d{2})/" + NAME_RE, keys[0])
    assert m, keys[0]
    assert m["stream"] == "named"
    t = _key_time(m["ts"])
    assert before <= t <= after, (keys[0], before, after)
    assert m.group(1, 2, 3, 4) == (f"{t.year:04}", f"{t.month:02}", f"{t.day:02}", f"{t.hour:02}")


def test_prefix_expressions_are_evaluated_in_keys(server):
    """!{timestamp:...} and !{firehose:random-string} in the Prefix are evaluated per object,
    and no hourly folders are appended when the Prefix has its own timestamp."""
    c = server.client()
    c.create_delivery_stream(
        **stream_config(
            "expr",
            bucket="expr-bucket",
            interval=300,
            Prefix="year=!{timestamp:yyyy}/month=!{timestamp:MM}/!{firehose:random-string}/",
            ErrorOutputPrefix="errors/!{firehose:error-output-type}/",
        )
    )
    before = datetime.now(timezone.utc).replace(microsecond=0)
    c.put_record(DeliveryStreamName="expr", Record={"Data": b"x"})
    after = datetime.now(timezone.utc)
    stop_cleanly(server)
    keys = server.keys("expr-bucket")
    assert len(keys) == 1, keys
    m = re.fullmatch(r"year=(\d{4})/month=(\d{2})/([0-9a-z]{11})/" + NAME_RE, keys[0])
    assert m, keys[0]
    t = _key_time(m["ts"])
    assert before <= t <= after
    assert (m.group(1), m.group(2)) == (f"{t.year:04}", f"{t.month:02}")
    assert lake_records(server, "expr-bucket") == [b"x"]


def test_create_existing_name_is_resource_in_use(server):
    """Creating a stream whose name exists fails with ResourceInUseException and leaves the
    existing stream as it was."""
    c = server.client()
    c.create_delivery_stream(**stream_config("dup", bucket="first-bucket"))
    with pytest.raises(c.exceptions.ResourceInUseException):
        c.create_delivery_stream(**stream_config("dup", bucket="second-bucket"))
    d = c.describe_delivery_stream(DeliveryStreamName="dup")["DeliveryStreamDescription"]
    assert d["Destinations"][0]["ExtendedS3DestinationDescription"]["BucketARN"] == "arn:aws:s3:::first-bucket"
    assert names(c) == ["dup"]


def test_describe_unknown_or_invalid_stream(server):
    """DescribeDeliveryStream of a stream that does not exist is ResourceNotFoundException;
    of a name that cannot exist, ValidationException."""
    c = server.client()
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.describe_delivery_stream(DeliveryStreamName="nothing-here")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.describe_delivery_stream(DeliveryStreamName="not/a/name")
    assert error_code(e.value) == "ValidationException"


# --- ListDeliveryStreams -----------------------------------------------------


def test_list_is_sorted_and_pages(server):
    """ListDeliveryStreams returns names sorted, 10 per page by default, honours Limit and
    ExclusiveStartDeliveryStreamName, and says whether more remain."""
    c = server.client()
    assert c.list_delivery_streams()["DeliveryStreamNames"] == []
    created = [f"s{i:02}-{w}" for i, w in zip([7, 3, 11, 0, 9, 1, 5, 10, 2, 8, 4, 6], "kdmagbhlcjei")]
    for n in created:
        c.create_delivery_stream(**stream_config(n))
    want = sorted(created)

    r = c.list_delivery_streams()
    assert r["DeliveryStreamNames"] == want[:10]
    assert r["HasMoreDeliveryStreams"] is True

    r = c.list_delivery_streams(Limit=100)
    assert r["DeliveryStreamNames"] == want
    assert r["HasMoreDeliveryStreams"] is False

    r = c.list_delivery_streams(Limit=5)
    assert r["DeliveryStreamNames"] == want[:5]
    assert r["HasMoreDeliveryStreams"] is True

    pages, start = [], None
    while True:
        kw = {"Limit": 5}
        if start:
            kw["ExclusiveStartDeliveryStreamName"] = start
        r = c.list_delivery_streams(**kw)
        pages.append(r["DeliveryStreamNames"])
        if not r["HasMoreDeliveryStreams"]:
            break
        start = r["DeliveryStreamNames"][-1]
        assert len(pages) < 10
    assert pages == [want[0:5], want[5:10], want[10:12]]

    r = c.list_delivery_streams(ExclusiveStartDeliveryStreamName=want[-1])
    assert (r["DeliveryStreamNames"], r["HasMoreDeliveryStreams"]) == ([], False)
    assert c.list_delivery_streams(DeliveryStreamType="DirectPut", Limit=100)["DeliveryStreamNames"] == want
    assert c.list_delivery_streams(DeliveryStreamType="KinesisStreamAsSource")["DeliveryStreamNames"] == []


# --- DeleteDeliveryStream ----------------------------------------------------


def test_delete_delivers_acknowledged_records_then_stream_is_gone(server):
    """DeleteDeliveryStream first delivers every acknowledged record (even ones still
    buffering), then the stream is gone: describe, put and a second delete all get
    ResourceNotFoundException, and it is no longer listed."""
    c = server.client()
    c.create_delivery_stream(**stream_config("doomed", bucket="doomed-bucket", interval=300, size_mb=5))
    c.create_delivery_stream(**stream_config("keeper", bucket="keeper-bucket"))
    records = [f"buffered-{i}".encode() for i in range(25)]
    c.put_record_batch(DeliveryStreamName="doomed", Records=[{"Data": r} for r in records[:20]])
    for r in records[20:]:
        c.put_record(DeliveryStreamName="doomed", Record={"Data": r})
    assert server.objects("doomed-bucket") == []

    c.delete_delivery_stream(DeliveryStreamName="doomed")
    assert lake_records(server, "doomed-bucket") == records
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.describe_delivery_stream(DeliveryStreamName="doomed")
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.put_record(DeliveryStreamName="doomed", Record={"Data": b"late"})
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.delete_delivery_stream(DeliveryStreamName="doomed")
    assert names(c) == ["keeper"]
    stop_cleanly(server)
    assert lake_records(server, "doomed-bucket") == records


def test_stream_can_be_recreated_after_delete(server):
    """After a delete the name is free again: a new stream of that name is created, takes
    records with fresh RecordIds, and the old stream's objects stay in the lake."""
    c = server.client()
    c.create_delivery_stream(**stream_config("again", bucket="again-bucket", interval=300))
    old_id = c.put_record(DeliveryStreamName="again", Record={"Data": b"old"})["RecordId"]
    c.delete_delivery_stream(DeliveryStreamName="again")
    c.create_delivery_stream(**stream_config("again", bucket="again-bucket", interval=300))
    new_id = c.put_record(DeliveryStreamName="again", Record={"Data": b"new"})["RecordId"]
    assert new_id != old_id
    stop_cleanly(server)
    assert sorted(lake_records(server, "again-bucket")) == [b"new", b"old"]
    assert len(server.objects("again-bucket")) == 2


def test_delete_with_missing_or_invalid_name(server):
    """DeleteDeliveryStream without a name, or with one that breaks the name pattern, is a
    ValidationException."""
    c = server.client(parameter_validation=False)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.delete_delivery_stream()
    assert error_code(e.value) == "ValidationException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.delete_delivery_stream(DeliveryStreamName="no spaces allowed")
    assert error_code(e.value) == "ValidationException"


# --- PutRecord and PutRecordBatch --------------------------------------------


def test_put_record_response_and_delivery_within_the_interval(server):
    """PutRecord returns a unique RecordId and Encrypted false; with a 1 s buffering interval
    the records reach the lake without any flush, in the order they were acknowledged."""
    c = server.client()
    c.create_delivery_stream(**stream_config("single", bucket="single-bucket"))
    records = [f"record-{i}".encode() for i in range(5)]
    ids = []
    for r in records:
        resp = c.put_record(DeliveryStreamName="single", Record={"Data": r})
        assert set(resp) == {"RecordId", "Encrypted", "ResponseMetadata"}
        assert resp["Encrypted"] is False
        assert isinstance(resp["RecordId"], str) and resp["RecordId"]
        ids.append(resp["RecordId"])
    assert len(set(ids)) == len(ids)
    wait_for(lambda: len(lake_records(server, "single-bucket")) >= len(records), what="records in the lake")
    got = lake_records(server, "single-bucket")
    assert sorted(got) == sorted(records)
    if len(server.objects("single-bucket")) == 1:
        assert got == records


def test_put_record_batch_response_and_lake(server):
    """PutRecordBatch returns FailedPutCount 0, Encrypted false and one RecordId per record,
    all unique across calls; every record lands in the lake exactly once."""
    c = server.client()
    c.create_delivery_stream(**stream_config("batch", bucket="batch-bucket"))
    b1 = [f"first-{i}".encode() for i in range(100)]
    b2 = [f"second-{i}".encode() for i in range(500)]
    ids = []
    for batch in (b1, b2):
        resp = c.put_record_batch(DeliveryStreamName="batch", Records=[{"Data": r} for r in batch])
        assert resp["FailedPutCount"] == 0
        assert resp["Encrypted"] is False
        assert len(resp["RequestResponses"]) == len(batch)
        for rr in resp["RequestResponses"]:
            assert set(rr) == {"RecordId"}, rr
            ids.append(rr["RecordId"])
    assert len(set(ids)) == len(b1) + len(b2)
    wait_for(lambda: len(lake_records(server, "batch-bucket")) >= 600, what="600 records in the lake")
    stop_cleanly(server)
    assert sorted(lake_records(server, "batch-bucket")) == sorted(b1 + b2)


def test_records_land_in_acknowledged_order(server):
    """Records put one by one and in batches are written in the order they were
    acknowledged, each followed by the newline AppendDelimiterToRecord adds."""
    c = server.client()
    c.create_delivery_stream(**stream_config("ordered", bucket="ordered-bucket", interval=300))
    want = []
    for i in range(10):
        r = f"single-{i}".encode()
        c.put_record(DeliveryStreamName="ordered", Record={"Data": r})
        want.append(r)
        batch = [f"batch-{i}-{j}".encode() for j in range(7)]
        c.put_record_batch(DeliveryStreamName="ordered", Records=[{"Data": b} for b in batch])
        want += batch
    stop_cleanly(server)
    objects = server.objects("ordered-bucket")
    assert len(objects) == 1
    assert objects[0].read_bytes() == b"".join(r + b"\n" for r in want)


def test_batch_with_an_oversize_record_fails_that_record_only(server):
    """In a PutRecordBatch, a record over 1,024,000 bytes gets an ErrorCode in its slot and
    FailedPutCount 1; the others (one of exactly 1,024,000 bytes) get RecordIds and land."""
    c = server.client()
    c.create_delivery_stream(**stream_config("big", bucket="big-bucket", size_mb=5, interval=300))
    records = [b"small-first", b"o" * (MAX_RECORD + 1), b"small-third", b"m" * MAX_RECORD]
    resp = c.put_record_batch(DeliveryStreamName="big", Records=[{"Data": r} for r in records])
    assert resp["FailedPutCount"] == 1
    rr = resp["RequestResponses"]
    assert len(rr) == 4
    assert rr[1]["ErrorCode"] == "InvalidArgumentException"
    assert rr[1]["ErrorMessage"]
    assert "RecordId" not in rr[1]
    for i in (0, 2, 3):
        assert rr[i]["RecordId"] and "ErrorCode" not in rr[i], rr[i]
    assert len({rr[i]["RecordId"] for i in (0, 2, 3)}) == 3
    stop_cleanly(server)
    assert lake_records(server, "big-bucket") == [records[0], records[2], records[3]]


def test_put_record_size_limit(server):
    """PutRecord takes a record of exactly 1,024,000 bytes and refuses one byte more with
    InvalidArgumentException; only the accepted record lands."""
    c = server.client()
    c.create_delivery_stream(**stream_config("limit", bucket="limit-bucket", size_mb=5, interval=300))
    with pytest.raises(c.exceptions.InvalidArgumentException):
        c.put_record(DeliveryStreamName="limit", Record={"Data": b"o" * (MAX_RECORD + 1)})
    c.put_record(DeliveryStreamName="limit", Record={"Data": b"k" * MAX_RECORD})
    stop_cleanly(server)
    assert lake_records(server, "limit-bucket") == [b"k" * MAX_RECORD]


def test_batch_of_501_records_is_refused_whole(server):
    """PutRecordBatch with 501 records fails as a whole with ValidationException (HTTP 400)
    and none of them land; 500 records are taken."""
    c = server.client()
    c.create_delivery_stream(**stream_config("count", bucket="count-bucket", interval=300))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.put_record_batch(DeliveryStreamName="count", Records=[{"Data": f"no-{i}".encode()} for i in range(501)])
    assert error_code(e.value) == "ValidationException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    ok = [f"yes-{i}".encode() for i in range(500)]
    resp = c.put_record_batch(DeliveryStreamName="count", Records=[{"Data": r} for r in ok])
    assert resp["FailedPutCount"] == 0 and len(resp["RequestResponses"]) == 500
    stop_cleanly(server)
    assert lake_records(server, "count-bucket") == ok


def test_batch_over_4_mib_is_refused_whole(server):
    """PutRecordBatch whose records total more than 4 MiB fails as a whole with
    InvalidArgumentException and none of it lands; exactly 4 MiB is taken."""
    c = server.client()
    c.create_delivery_stream(**stream_config("mib", bucket="mib-bucket", size_mb=8, interval=300))
    sizes = [MAX_RECORD] * 4 + [MAX_BATCH_BYTES - 4 * MAX_RECORD]
    exact = [bytes([ord("a") + i]) * n for i, n in enumerate(sizes)]
    over = [bytes([ord("p") + i]) * n for i, n in enumerate(sizes[:-1] + [sizes[-1] + 1])]
    assert sum(map(len, exact)) == MAX_BATCH_BYTES and sum(map(len, over)) == MAX_BATCH_BYTES + 1
    with pytest.raises(c.exceptions.InvalidArgumentException):
        c.put_record_batch(DeliveryStreamName="mib", Records=[{"Data": r} for r in over])
    resp = c.put_record_batch(DeliveryStreamName="mib", Records=[{"Data": r} for r in exact])
    assert resp["FailedPutCount"] == 0 and len(resp["RequestResponses"]) == 5
    stop_cleanly(server)
    assert lake_records(server, "mib-bucket") == exact


def test_put_to_unknown_stream_is_resource_not_found(server):
    """PutRecord and PutRecordBatch to a stream that does not exist get
    ResourceNotFoundException naming the stream."""
    c = server.client()
    with pytest.raises(c.exceptions.ResourceNotFoundException) as e:
        c.put_record(DeliveryStreamName="ghost", Record={"Data": b"x"})
    assert "ghost" in e.value.response["Error"]["Message"]
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.put_record_batch(DeliveryStreamName="ghost", Records=[{"Data": b"x"}])


def test_put_with_invalid_stream_name_is_validation_error(server):
    """A stream name that breaks Firehose's pattern or length gets ValidationException, a
    code boto3 has no class for, with HTTP 400."""
    c = server.client()
    for bad in ["bad name!", "x" * 65, "slash/name"]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            c.put_record(DeliveryStreamName=bad, Record={"Data": b"x"})
        assert error_code(e.value) == "ValidationException", (bad, e.value.response["Error"])
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        with pytest.raises(botocore.exceptions.ClientError) as e:
            c.put_record_batch(DeliveryStreamName=bad, Records=[{"Data": b"x"}])
        assert error_code(e.value) == "ValidationException"


def test_puts_missing_required_fields_are_validation_errors(server):
    """With boto3's own checks off: a put without DeliveryStreamName, a PutRecord without
    Record, and a PutRecordBatch with no records are each ValidationException."""
    c = server.client(parameter_validation=False)
    server.client().create_delivery_stream(**stream_config("req", bucket="req-bucket", interval=300))
    calls = [
        lambda: c.put_record(Record={"Data": b"x"}),
        lambda: c.put_record(DeliveryStreamName="req"),
        lambda: c.put_record_batch(Records=[{"Data": b"x"}]),
        lambda: c.put_record_batch(DeliveryStreamName="req", Records=[]),
        lambda: c.put_record_batch(DeliveryStreamName="req"),
        lambda: c.describe_delivery_stream(),
    ]
    for i, call in enumerate(calls):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert error_code(e.value) == "ValidationException", (i, e.value.response["Error"])
    stop_cleanly(server)
    assert server.objects("req-bucket") == []


def test_concurrent_producers_lose_and_duplicate_nothing(server):
    """Eight producers putting batches at once all get unique RecordIds, and every record
    reaches the lake exactly once."""
    server.client().create_delivery_stream(**stream_config("busy", bucket="busy-bucket"))
    ids, errors = [], []
    lock = threading.Lock()

    clients = [server.client() for _ in range(8)]

    def producer(p):
        try:
            c = clients[p]
            for b in range(20):
                batch = [f"p{p}-b{b}-r{r}".encode() for r in range(25)]
                resp = c.put_record_batch(DeliveryStreamName="busy", Records=[{"Data": x} for x in batch])
                assert resp["FailedPutCount"] == 0
                with lock:
                    ids.extend(rr["RecordId"] for rr in resp["RequestResponses"])
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=producer, args=(p,)) for p in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    want = sorted(f"p{p}-b{b}-r{r}".encode() for p in range(8) for b in range(20) for r in range(25))
    assert len(ids) == len(want) == len(set(ids))
    stop_cleanly(server)
    assert sorted(lake_records(server, "busy-bucket")) == want


def _load(server, stream, producers=4):
    """Starts producers putting 20-record batches until told to stop.
    Returns (stop event, threads, acknowledged records, error names seen)."""
    clients = [server.client() for _ in range(producers)]
    acked, seen, stop = [], [], threading.Event()
    lock = threading.Lock()

    def producer(p):
        i = 0
        while not stop.is_set():
            batch = [f"p{p}-{i}-{j}".encode() for j in range(20)]
            i += 1
            try:
                resp = clients[p].put_record_batch(DeliveryStreamName=stream, Records=[{"Data": b} for b in batch])
            except botocore.exceptions.ClientError as e:
                with lock:
                    seen.append(error_code(e))
                continue
            except botocore.exceptions.BotoCoreError as e:
                with lock:
                    seen.append(type(e).__name__)
                break
            with lock:
                if resp["FailedPutCount"]:
                    seen.append("FailedPutCount")
                else:
                    acked.extend(batch)

    threads = [threading.Thread(target=producer, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    return stop, threads, acked, seen


def test_delete_under_load_keeps_every_acknowledged_record(server):
    """Deleting a stream while producers are putting to it: every put that was acknowledged
    is in the lake exactly once, and the puts that were not get ServiceUnavailableException
    (closing) or ResourceNotFoundException (gone)."""
    c = server.client()
    c.create_delivery_stream(**stream_config("hot", bucket="hot-bucket", interval=300))
    stop, threads, acked, seen = _load(server, "hot")
    wait_for(lambda: len(acked) >= 400, what="producers to get going")
    c.delete_delivery_stream(DeliveryStreamName="hot")
    wait_for(lambda: "ResourceNotFoundException" in seen, what="puts to see the stream gone")
    stop.set()
    for t in threads:
        t.join()
    assert set(seen) <= {"ServiceUnavailableException", "ResourceNotFoundException"}, set(seen)
    stop_cleanly(server)
    assert sorted(lake_records(server, "hot-bucket")) == sorted(acked)


def test_sigterm_under_load_delivers_every_acknowledged_record(server):
    """SIGTERM while producers are putting: hydrant exits 0 and every acknowledged record is
    in the lake exactly once."""
    server.client().create_delivery_stream(**stream_config("busy-stop", bucket="stop-bucket", interval=300))
    stop, threads, acked, seen = _load(server, "busy-stop")
    wait_for(lambda: len(acked) >= 400, what="producers to get going")
    stop_cleanly(server)
    stop.set()
    for t in threads:
        t.join()
    assert "FailedPutCount" not in seen
    assert sorted(lake_records(server, "stop-bucket")) == sorted(acked)


# --- error responses over raw HTTP -------------------------------------------


def _marker_only(server, c, stream, bucket):
    """Puts a marker, stops hydrant cleanly, and returns what the bucket holds."""
    c.put_record(DeliveryStreamName=stream, Record={"Data": b"marker"})
    stop_cleanly(server)
    return lake_records(server, bucket)


def test_raw_malformed_json_is_serialization_exception(server):
    """A body that is not JSON, or JSON of the wrong shape, gets HTTP 400 with __type
    SerializationException, and nothing is stored."""
    c = server.client()
    c.create_delivery_stream(**stream_config("raw", bucket="raw-bucket", interval=300))
    for target, body in [
        ("PutRecord", b'{"DeliveryStreamName": "raw", "Record": {"Data": '),
        ("PutRecord", b"not json at all"),
        ("PutRecordBatch", b'{"DeliveryStreamName": "raw", "Records": "aGk="}'),
        ("PutRecord", b'{"DeliveryStreamName": 7, "Record": {"Data": "aGk="}}'),
        ("CreateDeliveryStream", b"[1, 2]"),
        ("ListDeliveryStreams", b'{"Limit": "ten"}'),
    ]:
        status, doc, _ = raw(server, TARGET + target, body)
        assert status == 400, (target, body, status, doc)
        assert doc["__type"] == "SerializationException", (target, body, doc)
        assert doc.get("message") or doc.get("Message")
    assert _marker_only(server, c, "raw", "raw-bucket") == [b"marker"]


def test_raw_bad_base64_is_serialization_exception(server):
    """Data that is not base64 gets HTTP 400 SerializationException; in a batch it fails
    the whole request, so even the well-formed records in it are not stored."""
    c = server.client()
    c.create_delivery_stream(**stream_config("b64", bucket="b64-bucket", interval=300))
    status, doc, _ = raw(server, TARGET + "PutRecord", {"DeliveryStreamName": "b64", "Record": {"Data": "not*base64!"}})
    assert (status, doc["__type"]) == (400, "SerializationException"), doc
    status, doc, _ = raw(
        server,
        TARGET + "PutRecordBatch",
        {"DeliveryStreamName": "b64", "Records": [{"Data": b64(b"good")}, {"Data": "%%%%"}]},
    )
    assert (status, doc["__type"]) == (400, "SerializationException"), doc
    assert _marker_only(server, c, "b64", "b64-bucket") == [b"marker"]


def test_raw_put_record_error_names_the_record_field(server):
    """A PutRecord whose Data is missing or not base64 is refused with a message that
    points at the PutRecord request's own field (Record.Data), not at a batch field."""
    c = server.client()
    c.create_delivery_stream(**stream_config("msg", bucket="msg-bucket"))
    for record, kind in [({"Data": "@@@@"}, "SerializationException"), ({}, "ValidationException")]:
        status, doc, _ = raw(server, TARGET + "PutRecord", {"DeliveryStreamName": "msg", "Record": record})
        assert (status, doc["__type"]) == (400, kind), doc
        assert "Data" in doc["message"], doc
        assert "Records[" not in doc["message"], f"PutRecord has no Records field; message was {doc['message']!r}"


def test_raw_json_escapes_in_data_are_decoded(server):
    """JSON string escapes inside Data (\\/ for /, as some encoders write) are undone
    before the base64 is decoded."""
    c = server.client()
    c.create_delivery_stream(**stream_config("esc", bucket="esc-bucket", interval=300, delimiter=False))
    data = bytes([0xFF, 0xFF, 0xFF, 0xFB, 0xFF])
    encoded = b64(data)
    assert "/" in encoded
    body = json.dumps({"DeliveryStreamName": "esc", "Record": {"Data": encoded}}).replace("/", "\\/").encode()
    status, doc, _ = raw(server, TARGET + "PutRecord", body)
    assert status == 200, doc
    assert doc["RecordId"]
    stop_cleanly(server)
    assert [p.read_bytes() for p in server.objects("esc-bucket")] == [data]


def test_raw_missing_stream_name_is_validation_exception(server):
    """A raw put with no DeliveryStreamName gets HTTP 400 ValidationException."""
    for target, body in [
        ("PutRecord", {"Record": {"Data": b64(b"x")}}),
        ("PutRecordBatch", {"Records": [{"Data": b64(b"x")}]}),
        ("DescribeDeliveryStream", {}),
        ("DeleteDeliveryStream", {}),
    ]:
        status, doc, _ = raw(server, TARGET + target, body)
        assert (status, doc["__type"]) == (400, "ValidationException"), (target, doc)
        assert "DeliveryStreamName" in doc["message"]


def test_raw_wrong_content_type_is_refused(server):
    """A request whose Content-Type is not application/x-amz-json-1.1 (or that has none) gets
    HTTP 400 SerializationException and its record is not stored."""
    c = server.client()
    c.create_delivery_stream(**stream_config("ct", bucket="ct-bucket", interval=300))
    body = {"DeliveryStreamName": "ct", "Record": {"Data": b64(b"wrong-type")}}
    for ct in ["application/json", "text/plain", None]:
        status, doc, _ = raw(server, TARGET + "PutRecord", body, content_type=ct)
        assert (status, doc["__type"]) == (400, "SerializationException"), (ct, doc)
    status, doc, _ = raw(server, TARGET + "PutRecord", body, content_type=JSON_11 + "; charset=utf-8")
    assert status == 200, doc
    lake = _marker_only(server, c, "ct", "ct-bucket")
    assert lake == [b"wrong-type", b"marker"]


def test_raw_missing_or_unknown_target_is_unknown_operation(server):
    """A request with no X-Amz-Target, a malformed one, another service's, or an operation
    Firehose does not have gets HTTP 400 UnknownOperationException, with the
    x-amzn-errortype header and a request id."""
    body = {"DeliveryStreamName": "x", "Record": {"Data": b64(b"x")}}
    for target in [None, "Firehose_20150804", "Kinesis_20131202.PutRecord", "Firehose_20150804.PutRecords", "Firehose_20150804."]:
        status, doc, headers = raw(server, target, body)
        assert (status, doc["__type"]) == (400, "UnknownOperationException"), (target, doc)
        lower = {k.lower(): v for k, v in headers.items()}
        assert lower.get("x-amzn-errortype", "").startswith("UnknownOperationException")
        assert lower.get("x-amzn-requestid")
        assert lower.get("content-type", "").startswith(JSON_11)


def test_unimplemented_operation_is_reported_not_faked(server):
    """Firehose operations hydrant does not serve (UpdateDestination, TagDeliveryStream) fail
    with UnknownOperationException instead of pretending to succeed."""
    c = server.client()
    c.create_delivery_stream(**stream_config("fixed"))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.update_destination(
            DeliveryStreamName="fixed",
            CurrentDeliveryStreamVersionId="1",
            DestinationId="destinationId-000000000001",
            ExtendedS3DestinationUpdate={"Prefix": "changed/"},
        )
    assert error_code(e.value) == "UnknownOperationException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.tag_delivery_stream(DeliveryStreamName="fixed", Tags=[{"Key": "a", "Value": "b"}])
    assert error_code(e.value) == "UnknownOperationException"
    d = c.describe_delivery_stream(DeliveryStreamName="fixed")["DeliveryStreamDescription"]
    assert d["VersionId"] == "1"
    assert d["Destinations"][0]["ExtendedS3DestinationDescription"]["Prefix"] == "events/"


# --- restarts, crashes, config-file streams, back-pressure -------------------


def test_api_streams_survive_a_restart(server):
    """Streams created through the API are still there after a SIGTERM restart, with the same
    ARN, creation time and settings; they keep taking records, and every record from
    both runs is in the lake exactly once."""
    c = server.client()
    c.create_delivery_stream(**stream_config("alpha", bucket="alpha-bucket", interval=300))
    c.create_delivery_stream(**stream_config("beta", bucket="beta-bucket", prefix="b/", size_mb=2, interval=300))
    before = {n: c.describe_delivery_stream(DeliveryStreamName=n)["DeliveryStreamDescription"] for n in ("alpha", "beta")}
    a1 = [f"a-run1-{i}".encode() for i in range(3)]
    b1 = [f"b-run1-{i}".encode() for i in range(4)]
    for r in a1:
        c.put_record(DeliveryStreamName="alpha", Record={"Data": r})
    c.put_record_batch(DeliveryStreamName="beta", Records=[{"Data": r} for r in b1])

    stop_cleanly(server)
    assert lake_records(server, "alpha-bucket") == a1
    assert lake_records(server, "beta-bucket") == b1

    server.start()
    c = server.client()
    assert names(c) == ["alpha", "beta"]
    for n in ("alpha", "beta"):
        after = c.describe_delivery_stream(DeliveryStreamName=n)["DeliveryStreamDescription"]
        assert after == before[n]
    a2 = [f"a-run2-{i}".encode() for i in range(3)]
    b2 = [f"b-run2-{i}".encode() for i in range(4)]
    ids2 = [c.put_record(DeliveryStreamName="alpha", Record={"Data": r})["RecordId"] for r in a2]
    assert len(set(ids2)) == 3
    c.put_record_batch(DeliveryStreamName="beta", Records=[{"Data": r} for r in b2])
    stop_cleanly(server)
    assert sorted(lake_records(server, "alpha-bucket")) == sorted(a1 + a2)
    assert sorted(lake_records(server, "beta-bucket")) == sorted(b1 + b2)


def test_acknowledged_records_survive_a_crash(server):
    """Records acknowledged but still buffering when hydrant is SIGKILLed are delivered
    after it restarts, each exactly once."""
    c = server.client()
    c.create_delivery_stream(**stream_config("crashy", bucket="crash-bucket", interval=300))
    records = [f"before-crash-{i}".encode() for i in range(50)]
    c.put_record_batch(DeliveryStreamName="crashy", Records=[{"Data": r} for r in records[:40]])
    for r in records[40:]:
        c.put_record(DeliveryStreamName="crashy", Record={"Data": r})
    assert server.objects("crash-bucket") == []
    server.kill()
    server.start()
    c = server.client()
    assert names(c) == ["crashy"]
    c.put_record(DeliveryStreamName="crashy", Record={"Data": b"after-crash"})
    stop_cleanly(server)
    assert sorted(lake_records(server, "crash-bucket")) == sorted(records + [b"after-crash"])


CONFIG = """\
delivery_streams:
  - DeliveryStreamName: from-config
    DeliveryStreamType: DirectPut
    ExtendedS3DestinationConfiguration:
      RoleARN: arn:aws:iam::123456789012:role/firehose
      BucketARN: arn:aws:s3:::config-bucket
      Prefix: cfg/
      BufferingHints: { IntervalInSeconds: 1, SizeInMBs: 1 }
      CompressionFormat: UNCOMPRESSED
      ProcessingConfiguration:
        Enabled: true
        Processors:
          - Type: AppendDelimiterToRecord
"""


def test_config_file_stream_is_listed_usable_and_not_deletable(make_server):
    """A stream declared in the config file is listed and described as declared, takes
    records that reach the lake, cannot be re-created, and DeleteDeliveryStream on it is
    refused with InvalidArgumentException, leaving it working."""
    server = make_server(config=CONFIG)
    c = server.client()
    assert names(c) == ["from-config"]
    ext = c.describe_delivery_stream(DeliveryStreamName="from-config")["DeliveryStreamDescription"]["Destinations"][0][
        "ExtendedS3DestinationDescription"
    ]
    assert ext["BucketARN"] == "arn:aws:s3:::config-bucket"
    assert ext["Prefix"] == "cfg/"
    assert ext["BufferingHints"] == {"SizeInMBs": 1, "IntervalInSeconds": 1}

    c.create_delivery_stream(**stream_config("api-made", bucket="api-bucket"))
    assert names(c) == ["api-made", "from-config"]
    with pytest.raises(c.exceptions.ResourceInUseException):
        c.create_delivery_stream(**stream_config("from-config", bucket="other-bucket"))

    c.put_record(DeliveryStreamName="from-config", Record={"Data": b"cfg-1"})
    wait_for(lambda: lake_records(server, "config-bucket"), what="the config stream's object")
    assert all(k.startswith("cfg/") for k in server.keys("config-bucket"))

    with pytest.raises(c.exceptions.InvalidArgumentException) as e:
        c.delete_delivery_stream(DeliveryStreamName="from-config")
    assert "config" in e.value.response["Error"]["Message"]
    assert names(c) == ["api-made", "from-config"]
    c.put_record_batch(DeliveryStreamName="from-config", Records=[{"Data": b"cfg-2"}, {"Data": b"cfg-3"}])
    stop_cleanly(server)
    assert sorted(lake_records(server, "config-bucket")) == [b"cfg-1", b"cfg-2", b"cfg-3"]

    server.start()
    c = server.client()
    assert names(c) == ["api-made", "from-config"]
    with pytest.raises(c.exceptions.InvalidArgumentException):
        c.delete_delivery_stream(DeliveryStreamName="from-config")


def test_full_log_pushes_back_with_service_unavailable(make_server):
    """When a stream's log is full, puts fail with ServiceUnavailableException (HTTP 503) and
    nothing of them is kept; every record acknowledged before is delivered on shutdown,
    and after the restart the stream takes records again."""
    server = make_server(config="log:\n  segment_mb: 1\n  max_mb_per_stream: 2\n")
    c = server.client()
    c.create_delivery_stream(**stream_config("tight", bucket="tight-bucket", size_mb=128, interval=900))
    accepted, refused = [], None
    for i in range(12):
        r = bytes([ord("A") + i]) * 400_000
        try:
            c.put_record(DeliveryStreamName="tight", Record={"Data": r})
            accepted.append(r)
        except c.exceptions.ServiceUnavailableException as e:
            refused = (r, e)
            break
    assert refused is not None, "12 x 400 KB never filled a 2 MiB log"
    assert refused[1].response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert accepted, "the log refused even the first record"
    with pytest.raises(c.exceptions.ServiceUnavailableException):
        c.put_record_batch(DeliveryStreamName="tight", Records=[{"Data": b"z" * 400_000}])
    stop_cleanly(server)
    assert lake_records(server, "tight-bucket") == accepted

    server.start()
    c = server.client()
    c.put_record(DeliveryStreamName="tight", Record={"Data": b"room again"})
    stop_cleanly(server)
    assert sorted(lake_records(server, "tight-bucket")) == sorted(accepted + [b"room again"])
