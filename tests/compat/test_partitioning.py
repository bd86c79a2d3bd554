"""Dynamic partitioning and the error output, end to end.

Partition keys come from Firehose's MetadataExtraction query; objects land
under the evaluated Prefix (Hive-style here); records that cannot be routed
land under the ErrorOutputPrefix as Firehose error documents, and the rest
of their batch lands normally. Exactly-once holds across SIGKILL with many
partitions and an active-partition bound that overflows.
"""

import base64
import json
import random
import re
import signal
import threading
import time
import urllib.request
from collections import Counter

import botocore.exceptions

from conftest import stream_config, wait_for

EVENTS = ["JOIN", "LEAVE", "OPEN_CHAT", "SUBSCRIBE", "SEND_MESSAGE"]


def partitioned(name="parts", bucket="parts", interval=1, size_mb=1, compression="UNCOMPRESSED"):
    req = stream_config(
        name=name, bucket=bucket, interval=interval, size_mb=size_mb, compression=compression,
        prefix="events/event_name=!{partitionKeyFromQuery:event_name}/region=!{partitionKeyFromQuery:region}/",
        ErrorOutputPrefix="errors/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/",
        DynamicPartitioningConfiguration={"Enabled": True},
    )
    req["ExtendedS3DestinationConfiguration"]["ProcessingConfiguration"] = {
        "Enabled": True,
        "Processors": [
            {"Type": "MetadataExtraction", "Parameters": [
                {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{event_name: .event_name, region: .geo.region}"},
                {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"},
            ]},
            {"Type": "AppendDelimiterToRecord"},
        ],
    }
    return req


def read_lake(server, bucket):
    """{key: [lines]} for every object in the bucket."""
    root = server.lake / bucket
    return {str(p.relative_to(root)): p.read_bytes().splitlines() for p in server.objects(bucket)}


def test_records_land_in_their_partition_and_bad_ones_in_the_error_output(server):
    c = server.client()
    c.create_delivery_stream(**partitioned())
    good = [{"id": i, "event_name": EVENTS[i % 5], "geo": {"region": ["eu", "us"][i % 2]}} for i in range(100)]
    bad = [{"id": 1000, "event_name": "JOIN"}, {"id": 1001, "event_name": "a/b", "geo": {"region": "eu"}}]
    records = good[:50] + bad + good[50:]
    r = c.put_record_batch(DeliveryStreamName="parts", Records=[{"Data": json.dumps(x)} for x in records])
    assert r["FailedPutCount"] == 0

    def failed():
        with urllib.request.urlopen(server.endpoint + "/-/streams", timeout=5) as f:
            return json.load(f)["streams"][0]["failed_records"]

    assert wait_for(failed, what="failed records counted") == {"DynamicPartitioning.MetadataExtractionFailed": 2}
    with urllib.request.urlopen(server.endpoint + "/-/metrics", timeout=5) as f:
        assert 'hydrant_records_failed_total{stream="parts",reason="DynamicPartitioning.MetadataExtractionFailed"} 2' in f.read().decode()
    assert server.stop() == 0

    lake = read_lake(server, "parts")
    seen = Counter()
    for key, lines in lake.items():
        if key.startswith("errors/"):
            assert re.fullmatch(r"errors/processing-failed/\d{4}/\d\d/\d\d/parts-1-.+", key), key
            docs = [json.loads(l) for l in lines]
            raws = sorted(json.loads(base64.b64decode(d["rawData"]))["id"] for d in docs)
            assert raws == [1000, 1001]
            assert {d["errorCode"] for d in docs} == {"DynamicPartitioning.MetadataExtractionFailed"}
            assert any("region" in d["errorMessage"] and "missing" in d["errorMessage"] for d in docs)
            continue
        m = re.fullmatch(r"events/event_name=(\w+)/region=(\w+)/\d{4}/\d\d/\d\d/\d\d/parts-1-.+", key)
        assert m, key
        ids = []
        for line in lines:
            rec = json.loads(line)
            assert (rec["event_name"], rec["geo"]["region"]) == m.groups()
            ids.append(rec["id"])
            seen[rec["id"]] += 1
        assert ids == sorted(ids), f"{key} out of order"
    assert sorted(seen) == list(range(100)) and set(seen.values()) == {1}
    assert len([k for k in lake if k.startswith("events/")]) == 10


def test_active_partition_bound_sends_the_overflow_to_the_error_output(make_server):
    server = make_server(f"delivery: {{max_active_partitions: 3}}\ndelivery_streams: [{json.dumps(partitioned(interval=900))}]")
    c = server.client()
    records = [{"id": i, "event_name": EVENTS[i % 5], "geo": {"region": "eu"}} for i in range(50)]
    r = c.put_record_batch(DeliveryStreamName="parts", Records=[{"Data": json.dumps(x)} for x in records])
    assert r["FailedPutCount"] == 0
    assert server.stop() == 0
    lake = read_lake(server, "parts")
    partitions = {k.split("/")[1] for k in lake if k.startswith("events/")}
    assert partitions == {"event_name=JOIN", "event_name=LEAVE", "event_name=OPEN_CHAT"}
    overflow = [json.loads(l) for k, ls in lake.items() if k.startswith("errors/") for l in ls]
    assert {d["errorCode"] for d in overflow} == {"DynamicPartitioning.ActivePartitionsLimitExceeded"}
    overflow_ids = sorted(json.loads(base64.b64decode(d["rawData"]))["id"] for d in overflow)
    assert overflow_ids == [i for i in range(50) if i % 5 >= 3]


def test_partitioned_stream_is_exactly_once_across_sigkill(make_server):
    """Producers send to 12 partitions with a bound of 8 active ones (so
    some records overflow to the error output) while the server is killed
    and restarted; every acknowledged record is in the lake exactly once,
    either in its partition or as an error document, never both."""
    server = make_server(f"log: {{segment_mb: 1}}\ndelivery: {{max_active_partitions: 8}}\ndelivery_streams: [{json.dumps(partitioned(interval=1, compression='GZIP'))}]")
    acked, lock, stop = set(), threading.Lock(), threading.Event()
    regions = ["eu", "us", "ap"]

    def produce(p):
        c = server.client(connect_timeout=2, read_timeout=10)
        n = 0
        while not stop.is_set():
            batch = [{"id": f"{p}-{n + i}", "event_name": EVENTS[(n + i) % 4], "geo": {"region": regions[(n + i) % 3]}, "pad": "x" * 200} for i in range(100)]
            n += 100
            try:
                r = c.put_record_batch(DeliveryStreamName="parts", Records=[{"Data": json.dumps(x)} for x in batch])
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                time.sleep(0.05)
                continue
            with lock:
                acked.update(x["id"] for x, res in zip(batch, r["RequestResponses"]) if "RecordId" in res)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(4):
            time.sleep(random.uniform(0.5, 1.5))
            server.kill()
            server.start()
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert server.stop(signal.SIGTERM) == 0
    import gzip
    seen = Counter()
    for p in server.objects("parts"):
        for line in gzip.decompress(p.read_bytes()).splitlines():
            doc = json.loads(line)
            rec = json.loads(base64.b64decode(doc["rawData"])) if "rawData" in doc else doc
            seen[rec["id"]] += 1
    dups = [k for k, v in seen.items() if v > 1]
    assert not dups, f"{len(dups)} records delivered twice: {dups[:5]}"
    missing = acked - set(seen)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged records missing"
    assert len(acked) > 1000
