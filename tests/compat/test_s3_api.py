"""hydrant's read-only S3 API, as the AWS CLI and boto3's S3 client see it.

Records go in through the Firehose API; what the S3 API reports is checked
against the lake directory itself: the same keys, sizes and bytes.
"""

import http.client
import math
import os
import subprocess
import time

import boto3
import botocore.config
import botocore.exceptions
import pytest

from conftest import AWS, aws_env, stream_config, wait_for

BUCKET = "data.staging.aws"


# --- helpers -----------------------------------------------------------------


def s3_client(server):
    return boto3.client(
        "s3",
        region_name="eu-west-1",
        endpoint_url=server.endpoint,
        aws_access_key_id="anything",
        aws_secret_access_key="anything",
        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 0}),
    )


def aws(server, *args, cwd=None):
    """Runs `aws <args> --endpoint-url <server>`; returns the CompletedProcess."""
    env = aws_env()
    return subprocess.run(
        [str(AWS), *args, "--endpoint-url", server.endpoint],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
        timeout=120,
    )


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return p.stdout


def lake_bytes(server, bucket) -> int:
    return sum(p.stat().st_size for p in server.objects(bucket))


def fill(server, streams, bucket=BUCKET, rounds=2, prefix=lambda name: f"events/{name}/"):
    """Creates one stream per name, puts `rounds` batches into each (waiting for
    delivery between rounds, so each round is its own object), and returns the
    lake's objects as {key: bytes}."""
    fh = server.client()
    for name in streams:
        fh.create_delivery_stream(**stream_config(name=name, bucket=bucket, prefix=prefix(name), interval=1))
    expected = lake_bytes(server, bucket)
    for r in range(rounds):
        for name in streams:
            records = [f'{{"stream":"{name}","round":{r},"n":{n}}}'.encode() for n in range(5)]
            resp = fh.put_record_batch(DeliveryStreamName=name, Records=[{"Data": d} for d in records])
            assert resp["FailedPutCount"] == 0
            expected += sum(len(d) + 1 for d in records)
        wait_for(lambda: lake_bytes(server, bucket) == expected, what=f"round {r} in the lake")
    root = server.lake / bucket
    return {k: (root / k).read_bytes() for k in server.keys(bucket)}


def code(exc) -> str:
    return exc.response["Error"]["Code"]


def status(exc) -> int:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"]


def raw_get(server, path, headers=None, method="GET"):
    """A request with exactly this (already encoded) path; returns (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def all_keys_v2(s3, bucket, **kw) -> list[str]:
    keys, token = [], None
    while True:
        page = s3.list_objects_v2(Bucket=bucket, **kw, **({"ContinuationToken": token} if token else {}))
        keys += [c["Key"] for c in page.get("Contents", [])]
        if not page["IsTruncated"]:
            return keys
        token = page["NextContinuationToken"]


# --- the AWS CLI -------------------------------------------------------------


def test_cli_ls_recursive_lists_exactly_the_lakes_keys_and_sizes(server):
    objects = fill(server, ["my-event-staging"])
    assert len(objects) == 2

    out = ok(aws(server, "s3", "ls", f"s3://{BUCKET}/events/", "--recursive"))
    listed = {}
    for line in out.splitlines():
        _date, _time, size, key = line.split(None, 3)
        listed[key] = int(size)
    assert listed == {k: len(v) for k, v in objects.items()}
    assert all(k.startswith("events/my-event-staging/") for k in listed)


def test_cli_ls_shows_buckets_and_prefixes(server):
    fill(server, ["clicks", "joins"], rounds=1)
    fill(server, ["orders"], bucket="other-bucket", rounds=1)
    # A directory no S3 client could name is not a bucket.
    (server.lake / "Not_A_Bucket").mkdir()

    buckets = [line.split()[-1] for line in ok(aws(server, "s3", "ls")).splitlines()]
    assert buckets == [BUCKET, "other-bucket"]

    out = ok(aws(server, "s3", "ls", f"s3://{BUCKET}/events/"))
    assert [line.split() for line in out.splitlines()] == [["PRE", "clicks/"], ["PRE", "joins/"]]


def test_cli_cp_recursive_downloads_byte_identical_files(server, tmp_path):
    objects = fill(server, ["my-event-staging", "other"])
    dest = tmp_path / "download"

    ok(aws(server, "s3", "cp", f"s3://{BUCKET}/events/", str(dest), "--recursive", "--no-progress"))

    got = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == {k.removeprefix("events/"): v for k, v in objects.items()}


def test_cli_sync_downloads_once_then_finds_nothing_new(server, tmp_path):
    objects = fill(server, ["my-event-staging"])
    dest = tmp_path / "mirror"

    first = ok(aws(server, "s3", "sync", f"s3://{BUCKET}/", str(dest), "--no-progress"))
    assert first.count("download:") == len(objects)
    got = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == objects

    # Sizes and LastModified agree with what was downloaded: nothing to do.
    again = ok(aws(server, "s3", "sync", f"s3://{BUCKET}/", str(dest), "--no-progress"))
    assert "download:" not in again


def test_cli_cp_of_an_object_larger_than_the_multipart_threshold(make_server, tmp_path):
    """The CLI fetches objects over 8 MiB as concurrent ranged GETs."""
    server = make_server()
    fh = server.client()
    fh.create_delivery_stream(
        **stream_config(name="big", bucket=BUCKET, prefix="big/", size_mb=64, interval=900, delimiter=False)
    )
    payload = b""
    for _ in range(3):
        records = [os.urandom(1_000_000) for _ in range(4)]
        assert fh.put_record_batch(DeliveryStreamName="big", Records=[{"Data": d} for d in records])["FailedPutCount"] == 0
        payload += b"".join(records)
    assert server.stop() == 0  # SIGTERM delivers every buffer: one 12 MB object
    server.start()
    [key] = server.keys(BUCKET)
    assert (server.lake / BUCKET / key).read_bytes() == payload

    ok(aws(server, "s3", "cp", f"s3://{BUCKET}/{key}", str(tmp_path / "big.bin"), "--no-progress"))
    assert (tmp_path / "big.bin").read_bytes() == payload

    s3 = s3_client(server)
    part = s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=8388600-8388700")
    assert part["Body"].read() == payload[8388600:8388701]


def test_cli_cp_of_a_missing_key_fails_with_404(server, tmp_path):
    fill(server, ["my-event-staging"], rounds=1)

    dest = tmp_path / "download"
    dest.mkdir()

    p = aws(server, "s3", "cp", f"s3://{BUCKET}/events/no-such-object.json", str(dest))

    assert p.returncode != 0
    assert "(404)" in p.stderr and "does not exist" in p.stderr, p.stderr
    assert list(dest.iterdir()) == []


def test_cli_ls_of_a_missing_bucket_fails_with_no_such_bucket(server):
    p = aws(server, "s3", "ls", "s3://no-such-bucket/")
    assert p.returncode != 0
    assert "NoSuchBucket" in p.stderr, p.stderr


def test_cli_writes_are_refused_as_read_only(server, tmp_path):
    objects = fill(server, ["my-event-staging"], rounds=1)
    local = tmp_path / "local.txt"
    local.write_text("not for the lake\n")
    [key] = objects

    up = aws(server, "s3", "cp", str(local), f"s3://{BUCKET}/events/uploaded.txt")
    rm = aws(server, "s3", "rm", f"s3://{BUCKET}/{key}")

    for p in (up, rm):
        assert p.returncode != 0
        assert "NotImplemented" in p.stderr and "read-only" in p.stderr, p.stderr
    assert server.keys(BUCKET) == [key]


def test_keys_with_spaces_plus_percent_and_unicode(server, tmp_path):
    """Keys travel percent-encoded in paths and in `encoding-type=url` listings."""
    objects = fill(server, ["odd"], rounds=1, prefix=lambda name: "odd/a b+c&é%41/")
    [key] = objects
    assert key.startswith("odd/a b+c&é%41/")
    s3 = s3_client(server)

    assert all_keys_v2(s3, BUCKET) == [key]
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == objects[key]
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="odd/", Delimiter="/")["CommonPrefixes"] == [
        {"Prefix": "odd/a b+c&é%41/"}
    ]

    listed = ok(aws(server, "s3", "ls", f"s3://{BUCKET}/", "--recursive"))
    assert listed.splitlines()[0].split(None, 3)[3] == key
    ok(aws(server, "s3", "cp", f"s3://{BUCKET}/odd/", str(tmp_path / "d"), "--recursive", "--no-progress"))
    assert (tmp_path / "d" / key.removeprefix("odd/")).read_bytes() == objects[key]


# --- boto3's S3 client -------------------------------------------------------


def test_list_objects_v2_pages_every_key_once_in_order(server):
    objects = fill(server, ["a", "b", "c", "d"])
    keys = server.keys(BUCKET)
    assert len(keys) >= 6 and keys == sorted(objects)
    s3 = s3_client(server)

    got, token, pages = [], None, 0
    while True:
        page = s3.list_objects_v2(Bucket=BUCKET, MaxKeys=2, **({"ContinuationToken": token} if token else {}))
        contents = page.get("Contents", [])
        assert page["KeyCount"] == len(contents) <= 2
        assert page["MaxKeys"] == 2
        got += [c["Key"] for c in contents]
        pages += 1
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert got == keys
    assert pages == math.ceil(len(keys) / 2)

    # The paginator (what the CLI uses) agrees, as does StartAfter.
    paged = [c["Key"] for p in s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, PaginationConfig={"PageSize": 3}) for c in p.get("Contents", [])]
    assert paged == keys
    assert all_keys_v2(s3, BUCKET, StartAfter=keys[2]) == keys[3:]
    assert all_keys_v2(s3, BUCKET, Prefix="events/c/") == [k for k in keys if k.startswith("events/c/")]


def test_listing_reports_size_etag_and_last_modified_of_each_object(server):
    objects = fill(server, ["a"])
    s3 = s3_client(server)

    contents = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert [c["Key"] for c in contents] == list(objects)
    for c in contents:
        path = server.lake / BUCKET / c["Key"]
        assert c["Size"] == len(objects[c["Key"]])
        assert c["StorageClass"] == "STANDARD"
        assert abs(c["LastModified"].timestamp() - path.stat().st_mtime) < 0.01
        assert c["ETag"].startswith('"') and c["ETag"].endswith('"')
        head = s3.head_object(Bucket=BUCKET, Key=c["Key"])
        assert head["ETag"] == c["ETag"]
        assert head["ContentLength"] == c["Size"]
        assert head["LastModified"] == c["LastModified"].replace(microsecond=0)
    assert len({c["ETag"] for c in contents}) == len(contents)


def test_list_objects_v1_pages_with_markers(server):
    fill(server, ["a", "b", "c"])
    keys = server.keys(BUCKET)
    s3 = s3_client(server)

    paged = [c["Key"] for p in s3.get_paginator("list_objects").paginate(
        Bucket=BUCKET, PaginationConfig={"PageSize": 2}) for c in p.get("Contents", [])]
    assert paged == keys

    first = s3.list_objects(Bucket=BUCKET, MaxKeys=2)
    assert first["IsTruncated"] and first["NextMarker"] == keys[1]
    rest = s3.list_objects(Bucket=BUCKET, Marker=first["NextMarker"])
    assert [c["Key"] for c in rest["Contents"]] == keys[2:]


def test_delimiter_rolls_keys_up_into_common_prefixes(server):
    fill(server, ["a", "b", "c"], rounds=1)
    s3 = s3_client(server)

    top = s3.list_objects_v2(Bucket=BUCKET, Delimiter="/")
    assert top["CommonPrefixes"] == [{"Prefix": "events/"}]
    assert "Contents" not in top

    streams = s3.list_objects_v2(Bucket=BUCKET, Prefix="events/", Delimiter="/")
    assert [p["Prefix"] for p in streams["CommonPrefixes"]] == ["events/a/", "events/b/", "events/c/"]
    assert streams["KeyCount"] == 3

    # Paging one at a time returns each common prefix once.
    seen = []
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix="events/", Delimiter="/", PaginationConfig={"PageSize": 1}
    ):
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert seen == ["events/a/", "events/b/", "events/c/"]
    v1 = []
    for page in s3.get_paginator("list_objects").paginate(
        Bucket=BUCKET, Prefix="events/", Delimiter="/", PaginationConfig={"PageSize": 1}
    ):
        v1 += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert v1 == seen


def test_get_object_whole_and_ranges(server):
    objects = fill(server, ["a"], rounds=1)
    [(key, data)] = objects.items()
    assert len(data) > 20
    s3 = s3_client(server)

    whole = s3.get_object(Bucket=BUCKET, Key=key)
    assert whole["Body"].read() == data
    assert whole["ContentLength"] == len(data)
    assert whole["ContentType"] == "application/octet-stream"

    part = s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=3-10")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == f"bytes 3-10/{len(data)}"
    assert part["Body"].read() == data[3:11]
    assert s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=-4")["Body"].read() == data[-4:]
    assert s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=5-")["Body"].read() == data[5:]
    assert s3.get_object(Bucket=BUCKET, Key=key, Range=f"bytes=10-{len(data) + 100}")["Body"].read() == data[10:]

    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={len(data)}-")
    assert code(e.value) == "InvalidRange" and status(e.value) == 416


def test_conditional_get_uses_the_etag(server):
    objects = fill(server, ["a"], rounds=1)
    [(key, data)] = objects.items()
    s3 = s3_client(server)
    etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]

    assert s3.get_object(Bucket=BUCKET, Key=key, IfMatch=etag)["Body"].read() == data
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key=key, IfNoneMatch=etag)
    assert status(e.value) == 304
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key=key, IfMatch='"something-else"')
    assert code(e.value) == "PreconditionFailed" and status(e.value) == 412


def test_missing_keys_and_buckets_are_s3_errors(server):
    fill(server, ["a"], rounds=1)
    s3 = s3_client(server)

    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key="events/a/no-such-object")
    assert code(e.value) == "NoSuchKey" and status(e.value) == 404
    # A directory is not an object.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key="events/a")
    assert code(e.value) == "NoSuchKey"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=BUCKET, Key="events/a/no-such-object")
    assert status(e.value) == 404

    for call in (
        lambda: s3.list_objects_v2(Bucket="no-such-bucket"),
        lambda: s3.get_object(Bucket="no-such-bucket", Key="events/x"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert code(e.value) == "NoSuchBucket" and status(e.value) == 404
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_bucket(Bucket="no-such-bucket")
    assert status(e.value) == 404
    assert s3.head_bucket(Bucket=BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200

    # The error body is S3's XML shape.
    st, headers, body = raw_get(server, f"/{BUCKET}/events/a/no-such-object")
    assert st == 404 and headers["content-type"] == "application/xml"
    assert b"<Error><Code>NoSuchKey</Code>" in body and b"<RequestId>" in body
    assert f"<Resource>/{BUCKET}/events/a/no-such-object</Resource>".encode() in body


def test_keys_cannot_leave_the_bucket(server):
    objects = fill(server, ["a"], rounds=1)
    secret = server.data_dir / "secret.txt"
    secret.write_text("outside the lake\n")
    bucket_dir = server.lake / BUCKET
    (bucket_dir / "events" / "link").symlink_to(secret)
    (server.lake / "linked-bucket").symlink_to(server.data_dir)
    s3 = s3_client(server)

    for key in ["../../secret.txt", "events/../../../secret.txt", "..", "events/a/.."]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket=BUCKET, Key=key)
        assert code(e.value) == "InvalidArgument" and status(e.value) == 400, key
    for path in (f"/{BUCKET}/%2E%2E/%2E%2E/secret.txt", f"/{BUCKET}/..%2F..%2Fsecret.txt"):
        st, _, body = raw_get(server, path)
        assert st == 400 and b"InvalidArgument" in body and b"outside" not in body, path

    # Symbolic links are neither followed nor listed.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key="events/link")
    assert code(e.value) == "NoSuchKey"
    assert all_keys_v2(s3, BUCKET) == list(objects)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="linked-bucket", Key="secret.txt")
    assert code(e.value) == "NoSuchBucket"
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [BUCKET]


def test_writes_are_refused_and_the_lake_is_untouched(server):
    objects = fill(server, ["a"], rounds=1)
    [key] = objects
    s3 = s3_client(server)

    for call in (
        lambda: s3.put_object(Bucket=BUCKET, Key="events/new.json", Body=b"{}"),
        lambda: s3.delete_object(Bucket=BUCKET, Key=key),
        lambda: s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": key}]}),
        lambda: s3.create_bucket(Bucket="new-bucket"),
        lambda: s3.create_multipart_upload(Bucket=BUCKET, Key="events/new.json"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert code(e.value) == "NotImplemented" and status(e.value) == 501
        assert "read-only" in e.value.response["Error"]["Message"]
    assert server.keys(BUCKET) == [key]
    assert (server.lake / BUCKET / key).read_bytes() == objects[key]
    assert not (server.lake / "new-bucket").exists()


def test_list_buckets_and_location(server):
    fill(server, ["a"], rounds=1)
    fill(server, ["b"], bucket="archive-2026", rounds=1)
    s3 = s3_client(server)

    buckets = s3.list_buckets()["Buckets"]
    assert [b["Name"] for b in buckets] == ["archive-2026", BUCKET]
    for b in buckets:
        created = b["CreationDate"].timestamp()
        assert time.time() - 120 < created <= time.time() + 1
    assert [b["Name"] for b in s3.list_buckets(Prefix="data.")["Buckets"]] == [BUCKET]
    assert s3.get_bucket_location(Bucket=BUCKET)["LocationConstraint"] == "eu-west-1"


def test_hydrant_endpoints_and_firehose_are_not_shadowed(server):
    fill(server, ["a"], rounds=1)

    st, _, body = raw_get(server, "/-/ready")
    assert (st, body) == (200, b"ready\n")
    st, headers, _ = raw_get(server, "/-/streams")
    assert st == 200 and headers["content-type"].startswith("application/json")
    # An unknown /-/ path is still hydrant's "no such endpoint", not an S3 bucket.
    for path in ("/-/no-such-endpoint", "/-"):
        st, headers, body = raw_get(server, path)
        assert st == 400 and b"UnknownOperationException" in body, path
    # GET / is ListBuckets only without a Firehose target.
    st, _, body = raw_get(server, "/", {"X-Amz-Target": "Firehose_20150804.ListDeliveryStreams"})
    assert st == 400 and b"UnknownOperationException" in body
    assert server.client().list_delivery_streams()["DeliveryStreamNames"] == ["a"]
