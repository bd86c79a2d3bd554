"""A bucket on a real S3-protocol server (s3s-fs, a file-backed S3
implementation from crates.io), written through hydrant's S3 store.

The server is a separate process started by the test, so it can be stopped
and restarted during delivery like a real outage.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import pytest

from conftest import free_port, hydrant_bin, stream_config, wait_for

AK, SK = "hydrant-test", "hydrant-test-secret"


def s3s_bin():
    found = os.environ.get("S3S_FS_BIN") or shutil.which("s3s-fs")
    if not found:
        msg = "s3s-fs is not installed (scripts/test installs it with cargo install s3s-fs)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip("SKIPPED LOUDLY: " + msg)
    return found


class S3Server:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self):
        self.proc = subprocess.Popen(
            [s3s_bin(), "--host", "127.0.0.1", "--port", str(self.port), "--access-key", AK, "--secret-key", SK, str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._up, timeout=15, what="the S3 server to answer")
        return self

    def _up(self):
        try:
            self.client().list_buckets()
            return True
        except Exception:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=AK, aws_secret_access_key=SK,
            config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def objects(self, bucket):
        c = self.client()
        out = {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                out[o["Key"]] = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        return out


@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path / "s3root").start()
    server.client().create_bucket(Bucket="lake-s3")
    yield server
    server.stop()


def hydrant_config(s3, stream, log=""):
    return f"""
{log}
buckets:
  lake-s3:
    endpoint: {s3.endpoint}
    region: us-east-1
    access_key_id: {AK}
    secret_access_key: {SK}
delivery_streams: [{json.dumps(stream)}]
"""


def test_objects_land_in_the_s3_bucket_with_firehose_keys(make_server, s3):
    server = make_server(hydrant_config(s3, stream_config(name="to-s3", bucket="lake-s3", prefix="events/to-s3/", interval=1)))
    c = server.client()
    sent = [json.dumps({"i": i}).encode() for i in range(1000)]
    for k in range(0, 1000, 250):
        c.put_record_batch(DeliveryStreamName="to-s3", Records=[{"Data": d} for d in sent[k:k + 250]])
    objects = wait_for(lambda: (o := s3.objects("lake-s3")) and sum(len(b.splitlines()) for b in o.values()) == 1000 and o,
                       what="1000 records in the S3 bucket")
    for key in objects:
        assert key.startswith("events/to-s3/") and "/to-s3-1-" in key, key
    got = sorted(l for b in objects.values() for l in b.splitlines())
    assert got == sorted(sent)
    # Nothing went to the embedded lake.
    assert server.objects("lake-s3") == []
    # The stream is a table, read from the S3 bucket.
    r = subprocess.run([hydrant_bin(), "query", 'SELECT count(*), sum(i) FROM "to-s3"', "--endpoint", server.endpoint, "--format", "json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == [[1000, sum(range(1000))]]
    # hydrant's own S3 API serves the embedded lake; a bucket on an S3
    # service is refused with an error that says where to read it.
    lake_api = boto3.client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="y",
        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 0}),
    )
    for call in (lambda: lake_api.list_objects_v2(Bucket="lake-s3"),
                 lambda: lake_api.get_object(Bucket="lake-s3", Key=next(iter(objects)))):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert e.value.response["Error"]["Code"] == "NotImplemented"
        assert "lives on an S3 service" in e.value.response["Error"]["Message"]
    assert server.stop() == 0


def test_large_objects_go_up_in_parts_and_arrive_whole(make_server, s3):
    server = make_server(hydrant_config(s3, stream_config(name="big", bucket="lake-s3", prefix="big/", size_mb=64, interval=900, delimiter=True)))
    c = server.client()
    payload = []
    for b in range(12):
        batch = [json.dumps({"b": b, "i": i, "pad": os.urandom(3000).hex()}).encode() for i in range(400)]
        payload += batch
        r = c.put_record_batch(DeliveryStreamName="big", Records=[{"Data": d} for d in batch])
        assert r["FailedPutCount"] == 0
    assert server.stop() == 0   # delivers the buffer: one object of ~29 MB
    objects = s3.objects("lake-s3")
    assert len(objects) == 1
    (key, body), = objects.items()
    expected = b"".join(d + b"\n" for d in payload)
    assert len(expected) > 16 << 20, "large enough to need a multipart upload"
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(expected).hexdigest()
    etag = s3.client().head_object(Bucket="lake-s3", Key=key)["ETag"]
    assert etag.strip('"').endswith("-4"), f"a multipart upload of 8 MiB parts: {etag}"


def test_an_s3_outage_loses_and_duplicates_nothing(make_server, s3):
    """The S3 server is killed and restarted twice while producers send:
    puts go on being acknowledged (the log keeps the records), delivery
    retries, and afterwards every acknowledged record is in the bucket
    exactly once."""
    server = make_server(hydrant_config(s3, stream_config(name="outage", bucket="lake-s3", prefix="o/", interval=1)))
    acked, lock, stop = [], threading.Lock(), threading.Event()

    def produce(p):
        c = server.client()
        n = 0
        while not stop.is_set():
            batch = [f"{p}-{n + i}".encode() for i in range(50)]
            n += 50
            try:
                r = c.put_record_batch(DeliveryStreamName="outage", Records=[{"Data": d} for d in batch])
            except botocore.exceptions.ClientError:
                time.sleep(0.05)
                continue
            with lock:
                acked.extend(d for d, x in zip(batch, r["RequestResponses"]) if "RecordId" in x)
            time.sleep(0.01)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(2):
            time.sleep(1.5)
            s3.stop()
            before = len(acked)
            time.sleep(2.5)
            assert len(acked) > before, "puts are acknowledged while the store is down"
            s3.start()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert server.stop() == 0
    counts = Counter(l for b in s3.objects("lake-s3").values() for l in b.splitlines())
    dups = [k for k, v in counts.items() if v > 1]
    assert not dups, f"written twice: {dups[:5]}"
    missing = [a for a in acked if counts[a] != 1]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged records missing"
    with open(server.log_path, errors="replace") as f:
        assert "will retry" in f.read(), "delivery saw the outage and retried"


def test_with_the_store_down_the_log_bound_pushes_back(make_server, s3):
    server = make_server(hydrant_config(s3, stream_config(name="bound", bucket="lake-s3", prefix="b/", interval=1), log="log: {segment_mb: 1, max_mb_per_stream: 2}"))
    s3.stop()
    c = server.client()
    acked, refused = [], None
    for n in range(100):
        data = f"{n:04d}".encode() + b"x" * 100_000
        try:
            c.put_record(DeliveryStreamName="bound", Record={"Data": data})
            acked.append(data)
        except c.exceptions.ServiceUnavailableException as e:
            refused = e
            break
    assert refused is not None and refused.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert 10 <= len(acked) <= 21
    s3.start()
    assert server.stop() == 0
    got = [l for b in s3.objects("lake-s3").values() for l in b.splitlines()]
    assert sorted(got) == sorted(acked)
