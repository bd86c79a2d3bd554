"""Limits: the per-stream log bound and a full disk turn puts into
ServiceUnavailableException (HTTP 503) without harming anything already
acknowledged; Firehose's record, count and request size limits are enforced
and a refused call leaves nothing in the lake."""

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter

import botocore.exceptions
import pytest

from conftest import mount_tmpfs, stream_config, unmount_tmpfs, wait_for

MIB = 1 << 20


def config(*streams, **top):
    return json.dumps({**top, "delivery_streams": list(streams)})


def lake_lines(server, bucket):
    """Every record in a bucket, objects in key order; each object must be whole."""
    out = []
    for p in server.objects(bucket):
        body = p.read_bytes()
        assert body.endswith(b"\n"), f"{p} ends mid-record"
        out.append(body.split(b"\n")[:-1])
    return out


def record(tag, i, size):
    head = f"{tag}-{i:05d}-".encode()
    return (head + b"x" * size)[:size]


def error_of(e):
    return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]


def test_log_bound_refuses_with_503_and_keeps_what_it_took(make_server):
    """With log.max_mb_per_stream 2 and nothing being delivered (128 MB /
    900 s hints), 100 KB puts succeed until the log holds about 2 MiB, then
    fail with ServiceUnavailableException (HTTP 503), for PutRecord and
    PutRecordBatch alike. SIGTERM then delivers exactly the acknowledged
    records, in order; after a restart, puts are taken again."""
    stream = stream_config(name="bounded", bucket="bounded", size_mb=128, interval=900)
    server = make_server(config=config(stream, log={"segment_mb": 1, "max_mb_per_stream": 2}))
    c = server.client()
    size = 100 * 1024
    acked = []
    refused = None
    for i in range(60):
        data = record("rec", i, size)
        try:
            c.put_record(DeliveryStreamName="bounded", Record={"Data": data})
        except c.exceptions.ServiceUnavailableException as e:
            refused = e
            break
        acked.append(data)
    assert refused is not None, f"{len(acked) * size} bytes taken by a log bounded at 2 MiB"
    assert error_of(refused) == ("ServiceUnavailableException", 503)
    assert len(acked) * size <= 2 * MIB, f"{len(acked)} records of 100 KB taken: over the 2 MiB bound"
    assert len(acked) >= (2 * MIB) // size - 1, f"refused after only {len(acked)} records of 100 KB"

    with pytest.raises(c.exceptions.ServiceUnavailableException) as e:
        c.put_record_batch(
            DeliveryStreamName="bounded", Records=[{"Data": record("refused", i, size)} for i in range(3)]
        )
    assert error_of(e.value) == ("ServiceUnavailableException", 503)
    with pytest.raises(c.exceptions.ServiceUnavailableException):
        c.put_record(DeliveryStreamName="bounded", Record={"Data": record("refused", 9, size)})
    assert server.objects("bounded") == []

    assert server.stop(signal.SIGTERM) == 0, server.log()[-2000:]
    assert [line for obj in lake_lines(server, "bounded") for line in obj] == acked

    server.start()
    c = server.client()
    more = [record("after", i, size) for i in range(3)]
    for data in more:
        c.put_record(DeliveryStreamName="bounded", Record={"Data": data})
    assert server.stop(signal.SIGTERM) == 0
    assert sorted(lake_lines(server, "bounded")) == sorted([acked, more])


@pytest.mark.parametrize("segment_mb,max_mb", [(1, 2), (1, 1)])
def test_log_bound_lifts_once_delivery_catches_up(make_server, segment_mb, max_mb):
    """A stream whose log hit log.max_mb_per_stream refuses puts with 503
    only until delivery catches up: once everything acknowledged is in the
    lake, puts are taken again without a restart (for every bound the config
    accepts, including max_mb_per_stream equal to segment_mb)."""
    stream = stream_config(name="drains", bucket="drains", size_mb=5, interval=1)
    server = make_server(config=config(stream, log={"segment_mb": segment_mb, "max_mb_per_stream": max_mb}))
    c = server.client()
    size = 100 * 1024
    acked = []
    for i in range(200):
        data = record("rec", i, size)
        try:
            c.put_record(DeliveryStreamName="drains", Record={"Data": data})
        except c.exceptions.ServiceUnavailableException as e:
            assert error_of(e) == ("ServiceUnavailableException", 503)
            break
        acked.append(data)
    else:
        pytest.fail(f"{len(acked)} records of 100 KB taken without a 503 from a {max_mb} MiB log")

    def delivered():
        return Counter(line for obj in lake_lines(server, "drains") for line in obj) == Counter(acked)

    wait_for(delivered, timeout=15, interval=0.2, what="every acknowledged record to reach the lake")
    later = record("later", 0, size)

    def taken():
        try:
            c.put_record(DeliveryStreamName="drains", Record={"Data": later})
            return True
        except c.exceptions.ServiceUnavailableException:
            return False

    wait_for(taken, timeout=10, interval=0.25, what="a put to be taken again after every acknowledged record reached the lake")
    assert server.stop(signal.SIGTERM) == 0
    objs = lake_lines(server, "drains")
    assert Counter(line for obj in objs for line in obj) == Counter(acked + [later])
    for obj in objs:
        assert obj == sorted(obj), "records out of order within an object"


def test_full_disk_refuses_with_503_and_loses_nothing(make_server, tmp_path):
    """With the data dir on a 16 MiB tmpfs that fills up, puts fail with
    ServiceUnavailableException (HTTP 503) while hydrant stays up (healthy,
    answering DescribeDeliveryStream). Once space is freed, puts are taken
    again, and after SIGTERM the lake holds every acknowledged record exactly
    once and no record twice."""
    mnt = tmp_path / "small-disk"
    mount_tmpfs(mnt, "16m")
    server = None
    try:
        filler = mnt / "filler"
        filler.write_bytes(os.urandom(4 * MIB))
        stream = stream_config(name="full", bucket="full", size_mb=1, interval=1)
        server = make_server(config=config(stream, log={"segment_mb": 1}), data_dir=mnt)
        c = server.client(read_timeout=30)
        acked, sent = [], set()
        refused = None
        for call in range(400):
            batch = [record(f"c{call:03d}", i, 50_000) for i in range(10)]
            sent.update(batch)
            try:
                r = c.put_record_batch(DeliveryStreamName="full", Records=[{"Data": d} for d in batch])
            except botocore.exceptions.ClientError as e:
                refused = e
                break
            acked += [d for d, x in zip(batch, r["RequestResponses"]) if "RecordId" in x]
        assert refused is not None, "16 MiB disk never filled"
        assert error_of(refused) == ("ServiceUnavailableException", 503), refused.response
        assert len(acked) * 50_000 > 4 * MIB, f"the disk was reported full after only {len(acked)} records"

        # Stay full for a while, so delivery (1 s interval) also runs into the full disk.
        deadline = time.time() + 2.5
        call = 0
        while time.time() < deadline:
            assert server.proc.poll() is None, f"hydrant died on a full disk:\n{server.log()[-3000:]}"
            with urllib.request.urlopen(f"{server.endpoint}/-/healthy", timeout=5) as h:
                assert h.status == 200
            d = c.describe_delivery_stream(DeliveryStreamName="full")
            assert d["DeliveryStreamDescription"]["DeliveryStreamStatus"] == "ACTIVE"
            batch = [record(f"full{call:03d}", i, 50_000) for i in range(10)]
            call += 1
            sent.update(batch)
            try:
                r = c.put_record_batch(DeliveryStreamName="full", Records=[{"Data": d} for d in batch])
                acked += [d for d, x in zip(batch, r["RequestResponses"]) if "RecordId" in x]
            except botocore.exceptions.ClientError as e:
                assert error_of(e) == ("ServiceUnavailableException", 503), e.response
            time.sleep(0.2)

        filler.unlink()
        late = [record("late", i, 1000) for i in range(10)]

        def put_late():
            try:
                c.put_record_batch(DeliveryStreamName="full", Records=[{"Data": d} for d in late])
                return True
            except botocore.exceptions.ClientError as e:
                assert error_of(e) == ("ServiceUnavailableException", 503)
                return False

        sent.update(late)
        wait_for(put_late, timeout=30, interval=0.5, what="puts to be taken again after space was freed")
        acked += late

        rc = server.stop(signal.SIGTERM)
        assert rc == 0, f"exit code {rc}\n{server.log()[-3000:]}"
        counts = Counter(line for obj in lake_lines(server, "full") for line in obj)
        assert not [x for x in counts if x not in sent], "records in the lake that were never sent"
        dups = [x[:12] for x, n in counts.items() if n > 1]
        assert not dups, f"records delivered twice: {dups[:10]}"
        missing = [x[:12] for x in acked if counts[x] != 1]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged records missing: {missing[:10]}\n{server.log()[-3000:]}"
    finally:
        if server is not None and server.proc is not None and server.proc.poll() is None:
            server.kill()
        unmount_tmpfs(mnt)


def test_request_limits(make_server):
    """Firehose's limits: a 1,024,000-byte record is taken and a
    1,024,001-byte one refused (InvalidArgumentException, HTTP 400);
    PutRecordBatch takes 500 records and refuses 501; it takes exactly 4 MiB
    of record data and refuses one byte more. A refused call leaves nothing
    in the lake; what was taken arrives intact and in order."""
    server = make_server(config=config(stream_config(name="limits", bucket="limits", size_mb=128, interval=900)))
    c = server.client(parameter_validation=False, read_timeout=60)
    taken = []

    biggest = record("max-record", 0, 1_024_000)
    r = c.put_record(DeliveryStreamName="limits", Record={"Data": biggest})
    assert r["RecordId"]
    taken.append(biggest)
    with pytest.raises(c.exceptions.InvalidArgumentException) as e:
        c.put_record(DeliveryStreamName="limits", Record={"Data": record("too-big", 0, 1_024_001)})
    assert error_of(e.value) == ("InvalidArgumentException", 400)

    five_hundred = [record("n500", i, 20) for i in range(500)]
    r = c.put_record_batch(DeliveryStreamName="limits", Records=[{"Data": d} for d in five_hundred])
    assert r["FailedPutCount"] == 0 and len(r["RequestResponses"]) == 500
    assert all("RecordId" in x for x in r["RequestResponses"])
    taken += five_hundred
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.put_record_batch(DeliveryStreamName="limits", Records=[{"Data": record("n501", i, 20)} for i in range(501)])
    assert error_of(e.value) == ("ValidationException", 400)

    four_mib = [record("4mib", i, 1_000_000) for i in range(4)] + [record("4mib", 4, 4 * MIB - 4_000_000)]
    assert sum(map(len, four_mib)) == 4 * MIB
    r = c.put_record_batch(DeliveryStreamName="limits", Records=[{"Data": d} for d in four_mib])
    assert r["FailedPutCount"] == 0 and all("RecordId" in x for x in r["RequestResponses"])
    taken += four_mib
    over = [record("over", i, 1_000_000) for i in range(4)] + [record("over", 4, 4 * MIB - 4_000_000 + 1)]
    with pytest.raises(c.exceptions.InvalidArgumentException) as e:
        c.put_record_batch(DeliveryStreamName="limits", Records=[{"Data": d} for d in over])
    assert error_of(e.value) == ("InvalidArgumentException", 400)

    assert server.stop(signal.SIGTERM) == 0
    assert [line for obj in lake_lines(server, "limits") for line in obj] == taken
