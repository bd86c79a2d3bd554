"""The AWS CLI (v1, from the test virtualenv) against a real hydrant process:
every Firehose command a user would type, with what lands checked in the lake.
"""

import json
import subprocess

import pytest

from conftest import AWS, aws_env, stream_config

ROLE = "arn:aws:iam::123456789012:role/firehose"


def aws(server, *args):
    """Runs `aws firehose <args>` against the server; returns the CompletedProcess."""
    env = aws_env()
    return subprocess.run(
        [str(AWS), "--endpoint-url", server.endpoint, "--region", "eu-west-1", "--output", "json", "firehose", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def ok(p) -> dict:
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return json.loads(p.stdout) if p.stdout.strip() else {}


def failed(p, code: str):
    assert p.returncode in (254, 255), f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert code in p.stderr, p.stderr


def lake_records(server, bucket) -> list[bytes]:
    out = []
    for obj in server.objects(bucket):
        data = obj.read_bytes()
        assert data.endswith(b"\n"), data[-40:]
        out.extend(data[:-1].split(b"\n"))
    return out


def stop_cleanly(server):
    rc = server.stop()
    assert rc == 0, f"hydrant exited {rc} on SIGTERM:\n{server.log()[-3000:]}"


def destination(bucket, interval=300, **extra) -> str:
    return json.dumps(stream_config("unused", bucket=bucket, interval=interval, **extra)["ExtendedS3DestinationConfiguration"])


@pytest.fixture(scope="module", autouse=True)
def cli_present():
    assert AWS.exists(), f"the AWS CLI is not installed at {AWS}"


def test_cli_create_describe_list(server):
    """create-delivery-stream with --extended-s3-destination-configuration JSON prints the
    ARN; describe-delivery-stream shows it ACTIVE with the given settings; list shows it."""
    created = ok(
        aws(
            server,
            "create-delivery-stream",
            "--delivery-stream-name", "cli-stream",
            "--delivery-stream-type", "DirectPut",
            "--extended-s3-destination-configuration", destination("cli-bucket", interval=60, prefix="cli/"),
        )
    )
    assert created["DeliveryStreamARN"].endswith(":deliverystream/cli-stream")

    d = ok(aws(server, "describe-delivery-stream", "--delivery-stream-name", "cli-stream"))["DeliveryStreamDescription"]
    assert d["DeliveryStreamName"] == "cli-stream"
    assert d["DeliveryStreamARN"] == created["DeliveryStreamARN"]
    assert d["DeliveryStreamStatus"] == "ACTIVE"
    assert d["VersionId"] == "1"
    ext = d["Destinations"][0]["ExtendedS3DestinationDescription"]
    assert ext["RoleARN"] == ROLE
    assert ext["BucketARN"] == "arn:aws:s3:::cli-bucket"
    assert ext["Prefix"] == "cli/"
    assert ext["BufferingHints"] == {"SizeInMBs": 1, "IntervalInSeconds": 60}

    listed = ok(aws(server, "list-delivery-streams"))
    assert listed == {"DeliveryStreamNames": ["cli-stream"], "HasMoreDeliveryStreams": False}


def test_cli_put_record_and_put_record_batch_land_in_the_lake(server):
    """put-record and put-record-batch return RecordIds, and the records reach the lake in
    order. AWS CLI v1 base64-encodes blob arguments itself, so the Data typed on the
    command line is what lands, even text that happens to look like base64."""
    ok(
        aws(
            server,
            "create-delivery-stream",
            "--delivery-stream-name", "cli-put",
            "--extended-s3-destination-configuration", destination("put-bucket"),
        )
    )
    r1 = ok(aws(server, "put-record", "--delivery-stream-name", "cli-put", "--record", "Data=hello from the cli"))
    r2 = ok(aws(server, "put-record", "--delivery-stream-name", "cli-put", "--record", json.dumps({"Data": '{"event": "click", "n": 1}'})))
    r3 = ok(aws(server, "put-record", "--delivery-stream-name", "cli-put", "--record", "Data=aGVsbG8="))
    batch = ["batch-one", '{"event": "view"}', "batch-three"]
    rb = ok(
        aws(
            server,
            "put-record-batch",
            "--delivery-stream-name", "cli-put",
            "--records", json.dumps([{"Data": d} for d in batch]),
        )
    )
    assert rb["FailedPutCount"] == 0
    assert len(rb["RequestResponses"]) == 3
    ids = [r1["RecordId"], r2["RecordId"], r3["RecordId"]] + [x["RecordId"] for x in rb["RequestResponses"]]
    assert all(ids) and len(set(ids)) == 6

    stop_cleanly(server)
    want = [b"hello from the cli", b'{"event": "click", "n": 1}', b"aGVsbG8="] + [d.encode() for d in batch]
    assert lake_records(server, "put-bucket") == want


def test_cli_delete_delivery_stream(server):
    """delete-delivery-stream removes the stream after delivering what it had; it is no
    longer listed and describing it fails with ResourceNotFoundException."""
    ok(aws(server, "create-delivery-stream", "--delivery-stream-name", "cli-del",
           "--extended-s3-destination-configuration", destination("del-bucket")))
    ok(aws(server, "put-record", "--delivery-stream-name", "cli-del", "--record", "Data=last words"))
    ok(aws(server, "delete-delivery-stream", "--delivery-stream-name", "cli-del"))
    assert lake_records(server, "del-bucket") == [b"last words"]
    assert ok(aws(server, "list-delivery-streams"))["DeliveryStreamNames"] == []
    failed(aws(server, "describe-delivery-stream", "--delivery-stream-name", "cli-del"), "ResourceNotFoundException")


def test_cli_unknown_stream_fails(server):
    """put-record and put-record-batch to a stream that does not exist exit non-zero with
    ResourceNotFoundException on stderr."""
    failed(aws(server, "put-record", "--delivery-stream-name", "missing", "--record", "Data=x"), "ResourceNotFoundException")
    failed(
        aws(server, "put-record-batch", "--delivery-stream-name", "missing", "--records", json.dumps([{"Data": "x"}])),
        "ResourceNotFoundException",
    )


def test_cli_unsupported_options_fail(server):
    """create-delivery-stream with an option hydrant does not implement (HADOOP_SNAPPY compression,
    tags) exits non-zero with InvalidArgumentException naming it, and creates nothing."""
    p = aws(
        server,
        "create-delivery-stream",
        "--delivery-stream-name", "cli-bad",
        "--extended-s3-destination-configuration", destination("bad-bucket", compression="HADOOP_SNAPPY"),
    )
    failed(p, "InvalidArgumentException")
    assert "HADOOP_SNAPPY" in p.stderr
    p = aws(
        server,
        "create-delivery-stream",
        "--delivery-stream-name", "cli-bad",
        "--extended-s3-destination-configuration", destination("bad-bucket"),
        "--tags", "Key=team,Value=data",
    )
    failed(p, "InvalidArgumentException")
    assert "Tags" in p.stderr
    assert ok(aws(server, "list-delivery-streams"))["DeliveryStreamNames"] == []


def test_cli_list_paging(server):
    """list-delivery-streams honours --limit and --exclusive-start-delivery-stream-name."""
    c = server.client()
    for n in ["cli-c", "cli-a", "cli-b"]:
        c.create_delivery_stream(**stream_config(n))
    first = ok(aws(server, "list-delivery-streams", "--limit", "2"))
    assert first == {"DeliveryStreamNames": ["cli-a", "cli-b"], "HasMoreDeliveryStreams": True}
    rest = ok(aws(server, "list-delivery-streams", "--limit", "2", "--exclusive-start-delivery-stream-name", "cli-b"))
    assert rest == {"DeliveryStreamNames": ["cli-c"], "HasMoreDeliveryStreams": False}
