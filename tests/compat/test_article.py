"""The tutorial's pipeline, run end to end against hydrant alone.

The delivery stream is the CloudFormation one (my-event-staging, bucket
data.staging.aws, prefix events/my-event-staging/, 300 s / 30 MB,
UNCOMPRESSED), declared one to one in hydrant's config file. The producer is
the tutorial's boto3 code, unchanged but for endpoint_url.
"""

import json
import random
import re
from datetime import datetime, timezone

import boto3

ARTICLE_CONFIG = """
delivery_streams:
  - DeliveryStreamName: my-event-staging
    DeliveryStreamType: DirectPut
    ExtendedS3DestinationConfiguration:
      BucketARN: arn:aws:s3:::data.staging.aws
      RoleARN: arn:aws:iam::123456789012:role/FirehoseStackStaging-DeliveryRole
      BufferingHints:
        IntervalInSeconds: 300
        SizeInMBs: 30
      CompressionFormat: UNCOMPRESSED
      Prefix: events/my-event-staging/
"""

STREAM_NAME = "my-event-staging"
EVENTS = ["JOIN", "LEAVE", "OPEN_CHAT", "SUBSCRIBE", "SEND_MESSAGE"]


def make_event():
    return {
        "event_time": datetime.now().isoformat(),
        "event_name": random.choice(EVENTS),
        "user": round(random.random() * 100),
    }


def test_article_producer_lands_in_the_lake_with_firehose_names(make_server):
    server = make_server(ARTICLE_CONFIG)
    before = datetime.now(timezone.utc)

    # The tutorial's producer, as written for real Firehose.
    client = boto3.client(
        "firehose",
        region_name="eu-west-1",
        endpoint_url=server.endpoint,
        aws_access_key_id="anything",
        aws_secret_access_key="anything",
    )
    sent = []
    for _ in range(20):
        data = make_event()
        client.put_record(DeliveryStreamName=STREAM_NAME, Record={"Data": json.dumps(data)})
        sent.append(json.dumps(data).encode())
    batch = [json.dumps(make_event()).encode() for _ in range(100)]
    resp = client.put_record_batch(DeliveryStreamName=STREAM_NAME, Records=[{"Data": b} for b in batch])
    assert resp["FailedPutCount"] == 0
    sent += batch

    desc = client.describe_delivery_stream(DeliveryStreamName=STREAM_NAME)["DeliveryStreamDescription"]
    dest = desc["Destinations"][0]["ExtendedS3DestinationDescription"]
    assert dest["BufferingHints"] == {"IntervalInSeconds": 300, "SizeInMBs": 30}
    assert dest["Prefix"] == "events/my-event-staging/"
    assert dest["BucketARN"] == "arn:aws:s3:::data.staging.aws"

    # 300 s is longer than a test should wait; a clean shutdown delivers the buffer.
    assert server.stop() == 0
    after = datetime.now(timezone.utc)

    keys = server.keys("data.staging.aws")
    assert len(keys) == 1, keys
    hours = {t.strftime("%Y/%m/%d/%H") for t in (before, after)}
    m = re.fullmatch(
        r"events/my-event-staging/(\d{4}/\d{2}/\d{2}/\d{2})/"
        r"my-event-staging-1-(\d{4})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-"
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        keys[0],
    )
    assert m, keys[0]
    assert m.group(1) in hours
    stamp = datetime(*map(int, m.groups()[1:]), tzinfo=timezone.utc)
    assert before.replace(microsecond=0) <= stamp <= after

    # Firehose writes records back to back: json.dumps adds no newline.
    body = server.objects("data.staging.aws")[0].read_bytes()
    assert body == b"".join(sent)
    decoded = list(json.JSONDecoder().raw_decode(body.decode(), i)[0] for i in _starts(body.decode()))
    assert [e["event_name"] in EVENTS for e in decoded] == [True] * len(sent)


def _starts(text):
    """Offsets of each JSON document in back-to-back JSON."""
    dec, i, out = json.JSONDecoder(), 0, []
    while i < len(text):
        out.append(i)
        _, i = dec.raw_decode(text, i)
    return out


def test_the_stream_survives_a_restart_with_its_records(make_server):
    server = make_server(ARTICLE_CONFIG)
    client = server.client()
    for i in range(10):
        client.put_record(DeliveryStreamName=STREAM_NAME, Record={"Data": json.dumps({"i": i})})
    # A crash, not a clean stop: the acknowledged records wait in the log.
    server.kill()
    assert server.keys("data.staging.aws") == []
    server.start()
    assert server.stop() == 0
    bodies = b"".join(p.read_bytes() for p in server.objects("data.staging.aws"))
    assert bodies == b"".join(json.dumps({"i": i}).encode() for i in range(10))
