"""Buffering and object keys, checked against a running hydrant: where objects
land (Prefix, ErrorOutputPrefix, the default hourly folders, the object name),
when they are cut (SizeInMBs before compression, IntervalInSeconds), what
they hold (delimiters, GZIP), and that SIGTERM flushes what is buffered."""

import datetime as dt
import gzip
import json
import os
import re
import signal
import subprocess
import time

from conftest import hydrant_bin, stream_config, wait_for

MIB = 1 << 20
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def config(*streams, **top):
    return json.dumps({**top, "delivery_streams": list(streams)})


def split_key(key, stream):
    """Splits a key into (prefix, object time, extension) by Firehose's name
    rule `<prefix><stream>-1-YYYY-MM-DD-HH-MM-SS-<uuid>[ext]`."""
    m = re.fullmatch(
        r"(?P<prefix>.*)" + re.escape(stream) + r"-1-(?P<ts>\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})-" + UUID + r"(?P<ext>\.gz)?",
        key,
        re.S,
    )
    assert m, f"key {key!r} is not <prefix>{stream}-1-YYYY-MM-DD-HH-MM-SS-<uuid>[.gz]"
    at = dt.datetime.strptime(m["ts"], "%Y-%m-%d-%H-%M-%S").replace(tzinfo=dt.timezone.utc)
    return m["prefix"], at, m["ext"] or ""


def utc_second(t):
    return dt.datetime.fromtimestamp(int(t), dt.timezone.utc)


def lines(body):
    assert body.endswith(b"\n"), body[-50:]
    return body.split(b"\n")[:-1]


def put_batches(client, stream, records, per_call=50):
    for i in range(0, len(records), per_call):
        r = client.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": d} for d in records[i:i + per_call]])
        assert r["FailedPutCount"] == 0, r


def sized_records(n, lo, hi, compressible=False):
    """n distinct records whose sizes cycle through [lo, hi)."""
    out = []
    for i in range(n):
        size = lo + (i * 7919) % (hi - lo)
        head = f"rec-{i:06d}-".encode()
        if compressible:
            body = (b"lorem ipsum dolor sit amet " * (size // 27 + 1))
        else:
            body = (head * (size // len(head) + 1))
        out.append((head + body)[:size])
    return out


def wait_for_size_cuts(server, bucket, start, interval):
    """Waits until the bucket holds two objects; returns the time they were
    seen (taken after listing them, so both existed by then). An interval cut
    is due no sooner than `interval` seconds after the oldest record arrived,
    which was after `start`; so two objects seen before `start + interval`
    were both cut by size. The deadline is just past that instant: a slower
    machine gets all the time the assertion allows, no more is meaningful."""
    def two():
        n = len(server.objects(bucket))
        t = time.time()
        return t if n >= 2 else None

    return wait_for(two, timeout=max(1.0, start + interval + 1 - time.time()), what=f"two size-cut objects in {bucket}")


def objects_before_interval(server, bucket, start, interval, first_record):
    """The size-cut objects, and a check that no other object was cut: while
    `interval` has not elapsed since `start` (before the first put) only size
    cuts can happen, so there must be exactly two. If a slow machine got past
    that instant, the interval may have cut the rest (it must then be the one
    extra object; the final count after SIGTERM still catches any spurious
    cut); the two size cuts are the ones holding the earliest records."""
    objs = server.objects(bucket)
    checked = time.time()
    if checked - start < interval:
        assert len(objs) == 2, [p.name for p in objs]
        return objs
    assert len(objs) in (2, 3), [p.name for p in objs]
    return sorted(objs, key=lambda p: int(first_record(p)[4:10]))[:2]


# (stream name, Prefix, ErrorOutputPrefix, regex the evaluated prefix must match at the object's time)
PREFIX_TABLE = [
    ("pfx-plain", "events/", None, lambda t: re.escape(f"events/{t:%Y/%m/%d/%H}/")),
    ("pfx-plain-with-error-prefix", "events/ok/", "errors/", lambda t: re.escape(f"events/ok/{t:%Y/%m/%d/%H}/")),
    ("pfx-no-slash", "plain", None, lambda t: re.escape(f"plain{t:%Y/%m/%d/%H}/")),
    ("pfx-empty", "", None, lambda t: re.escape(f"{t:%Y/%m/%d/%H}/")),
    (
        "pfx-timestamp",
        "y=!{timestamp:yyyy}/m=!{timestamp:MM}/",
        "err/!{firehose:error-output-type}/",
        lambda t: re.escape(f"y={t:%Y}/m={t:%m}/"),
    ),
    (
        "pfx-timestamp-pattern",
        "logs/!{timestamp:yyyy-MM-dd'T'HH}/!{timestamp:EEE}/",
        "e/!{firehose:error-output-type}/!{timestamp:yyyy}/",
        lambda t: re.escape(f"logs/{t:%Y-%m-%dT%H}/{t:%a}/"),
    ),
    (
        "pfx-random",
        "r/!{firehose:random-string}/",
        "e/!{firehose:error-output-type}/",
        lambda t: r"r/[0-9a-z]{11}/" + re.escape(f"{t:%Y/%m/%d/%H}/"),
    ),
]


def test_keys_follow_prefix_rules(make_server):
    """For each Prefix/ErrorOutputPrefix, the object's key is the evaluated
    prefix (with YYYY/MM/dd/HH/ appended when the Prefix has no timestamp)
    then `<stream>-1-YYYY-MM-DD-HH-MM-SS-<uuid>`, with the time of the put in
    UTC; the object holds the records put, in order."""
    streams = []
    for name, prefix, error_prefix, _ in PREFIX_TABLE:
        extra = {"ErrorOutputPrefix": error_prefix} if error_prefix is not None else {}
        streams.append(stream_config(name=name, bucket=f"bkt-{name}", prefix=prefix, size_mb=1, interval=1, **extra))
    server = make_server(config=config(*streams))
    c = server.client()
    sent = {}
    for name, *_ in PREFIX_TABLE:
        records = [json.dumps({"stream": name, "i": i}).encode() for i in range(3)]
        before = time.time()
        put_batches(c, name, records)
        sent[name] = (records, before, time.time())
    for name, *_ in PREFIX_TABLE:
        wait_for(lambda: server.objects(f"bkt-{name}"), timeout=60, what=f"an object from {name}")
    time.sleep(0.5)
    for name, prefix, error_prefix, expected in PREFIX_TABLE:
        keys = server.keys(f"bkt-{name}")
        assert len(keys) == 1, f"{name}: {keys}"
        key = keys[0]
        got_prefix, at, ext = split_key(key, name)
        records, before, after = sent[name]
        assert utc_second(before) <= at <= utc_second(after), f"{name}: key time {at} is not the time of the put ({utc_second(before)}..{utc_second(after)})"
        assert re.fullmatch(expected(at), got_prefix), f"{name} (Prefix {prefix!r}): key {key!r} has prefix {got_prefix!r}, expected /{expected(at)}/"
        assert ext == ""
        assert lines((server.lake / f"bkt-{name}" / key).read_bytes()) == records, key


def test_size_hint_cuts_objects_at_one_mib(make_server):
    """SizeInMBs 1 with a 60 s interval: ~2.5 MB of ~10 KB records yields two
    objects before the 60 s interval could have elapsed; each holds at least
    1 MiB and would have been under 1 MiB without its last record; SIGTERM
    then delivers the rest, and the lake holds every record once, in order."""
    server = make_server(config=config(stream_config(name="sized", bucket="bkt", size_mb=1, interval=60)))
    records = sized_records(250, 8_000, 12_000)
    start = time.time()
    put_batches(server.client(), "sized", records)
    seen = wait_for_size_cuts(server, "bkt", start, interval=60)
    assert seen - start < 60, f"the two objects took {seen - start:.1f}s, so IntervalInSeconds 60 may have cut them, not SizeInMBs"
    time.sleep(0.5)
    cut = objects_before_interval(server, "bkt", start, interval=60, first_record=lambda p: lines(p.read_bytes())[0])
    for p in cut:
        body = p.read_bytes()
        last = len(lines(body)[-1]) + 1
        assert len(body) >= MIB, f"{p.name}: {len(body)} bytes, cut before 1 MiB"
        assert len(body) - last < MIB, f"{p.name}: {len(body)} bytes, more than one record past 1 MiB"
    assert server.stop(signal.SIGTERM) == 0
    objs = server.objects("bkt")
    assert len(objs) == 3
    got = [line for p in sorted(objs, key=lambda p: int(lines(p.read_bytes())[0][4:10])) for line in lines(p.read_bytes())]
    assert got == records


def test_interval_hint_cuts_after_interval(make_server):
    """IntervalInSeconds 1 with a 128 MB size hint: a few records become one
    object no sooner than 1 s after they arrive (nothing but the interval can
    cut it), holding them all in order.

    The object must appear while the server runs (the interval cut it, not a
    shutdown); how soon is left to a generous deadline, since a loaded machine
    may run the cut late. If the puts themselves took a second or more, the
    interval may rightly have cut between them: then the records must still
    all be there, in order, the first object no sooner than 1 s after the
    first put."""
    server = make_server(config=config(stream_config(name="timed", bucket="bkt", size_mb=128, interval=1)))
    records = [f"event-{i}".encode() for i in range(5)]
    c = server.client()
    before = time.time()
    for r in records:
        c.put_record(DeliveryStreamName="timed", Record={"Data": r})
    put_done = time.time()

    def listed():
        objs = server.objects("bkt")
        return (objs, time.time()) if objs else None  # the time is taken after listing: they existed by then

    _, seen = wait_for(listed, timeout=60, interval=0.01, what="an object after IntervalInSeconds")
    assert seen - before >= 0.99, f"object appeared {seen - before:.3f}s after the first put, before IntervalInSeconds"
    if put_done - before < 1.0:
        # Every record arrived before the first one was 1 s old, so before any
        # cut: one object holds them all, and nothing is left to cut later.
        time.sleep(0.3)
        objs = server.objects("bkt")
        assert len(objs) == 1, [p.name for p in objs]
        assert lines(objs[0].read_bytes()) == records
    else:
        def delivered():
            objs = server.objects("bkt")
            got = sorted((lines(p.read_bytes()) for p in objs), key=lambda ls: int(ls[0][6:]))
            return got if sum(map(len, got)) >= len(records) else None

        got = wait_for(delivered, timeout=60, what="every record delivered by IntervalInSeconds")
        assert [line for o in got for line in o] == records, f"puts took {put_done - before:.2f}s; objects hold {got}"


def test_interval_counts_from_the_oldest_record(make_server):
    """IntervalInSeconds is measured from the oldest record in the buffer, so
    a steady trickle of records (one every 0.25 s with a 2 s interval) is cut
    into objects every ~2 s instead of being held back by each new record.

    Each record's arrival is bracketed by the client times just before and
    after its put, so a slow client cannot stretch or shrink what is measured.
    The trickle goes on for 5.5 s and until two objects were cut while it ran
    (generous deadline). An object's records must have arrived within the
    interval plus a slack for a late cut: 0.3 s, or the slowest put the server
    answered during the trickle if that was longer (a server that slow may run
    its cut that late too)."""
    interval = 2
    server = make_server(config=config(stream_config(name="trickle", bucket="bkt", size_mb=128, interval=interval)))
    c = server.client()
    start = time.time()
    first_object_at = None
    sent = []
    put_times = []  # (just before, just after) each put: the record arrived in between
    while True:
        now = time.time()
        if now - start >= 5.5 and len(server.objects("bkt")) >= 2:
            break
        assert now - start < 60, f"{len(server.objects('bkt'))} objects after {now - start:.0f}s while records kept arriving"
        before = time.time()
        rec = json.dumps({"i": len(sent), "at": before}).encode()
        c.put_record(DeliveryStreamName="trickle", Record={"Data": rec})
        put_times.append((before, time.time()))
        sent.append(rec)
        if first_object_at is None and server.objects("bkt"):
            first_object_at = time.time()
        time.sleep(0.25)
    assert first_object_at is not None, "no object while records kept arriving"
    assert first_object_at - put_times[0][0] >= interval - 0.01, (
        f"first object seen {first_object_at - put_times[0][0]:.2f}s after the first put, before IntervalInSeconds"
    )
    assert len(server.objects("bkt")) >= 2
    assert server.stop(signal.SIGTERM) == 0
    objs = [lines(p.read_bytes()) for p in server.objects("bkt")]
    objs.sort(key=lambda ls: json.loads(ls[0])["i"])
    assert [line for o in objs for line in o] == sent
    slowest_put = max(after - before for before, after in put_times)
    slack = max(0.3, slowest_put)
    for o in objs[:-1]:
        first, last = json.loads(o[0])["i"], json.loads(o[-1])["i"]
        # The least the arrivals can span: the last arrived after its put began, the first before its put returned.
        span = put_times[last][0] - put_times[first][1]
        assert span < interval + slack, (
            f"an object holds records {first}..{last} whose arrivals span at least {span:.2f}s "
            f"with a {interval} s interval (slack {slack:.2f}s, slowest put {slowest_put:.2f}s)"
        )


def test_no_delimiter_means_records_back_to_back(make_server):
    """Without AppendDelimiterToRecord, records are concatenated exactly as
    sent, with nothing added between them (Firehose behaviour)."""
    server = make_server(config=config(stream_config(name="raw", bucket="bkt", size_mb=1, interval=1, delimiter=False)))
    records = [b"a1", b"b22", b'{"c":333}', b"\x00\xffbinary", b"e\n"]
    server.client().put_record_batch(DeliveryStreamName="raw", Records=[{"Data": r} for r in records])
    wait_for(lambda: server.objects("bkt"), timeout=60, what="an object")
    assert server.stop(signal.SIGTERM) == 0
    objs = server.objects("bkt")
    assert len(objs) == 1
    assert objs[0].read_bytes() == b"".join(records)


def test_gzip_objects_and_uncompressed_size_hint(make_server):
    """GZIP: keys end in .gz, `gzip -d` gives back exactly the records put,
    and SizeInMBs counts uncompressed bytes: 2.5 MB of compressible records
    make two objects of at least 1 MiB uncompressed (each far smaller on
    disk) before the 60 s interval could have elapsed."""
    server = make_server(config=config(stream_config(name="zipped", bucket="bkt", size_mb=1, interval=60, compression="GZIP")))
    records = sized_records(250, 8_000, 12_000, compressible=True)
    start = time.time()
    put_batches(server.client(), "zipped", records)
    seen = wait_for_size_cuts(server, "bkt", start, interval=60)
    assert seen - start < 60, f"the two objects took {seen - start:.1f}s, so IntervalInSeconds 60 may have cut them, not SizeInMBs"
    time.sleep(0.5)
    cut = objects_before_interval(server, "bkt", start, interval=60, first_record=lambda p: lines(gzip.decompress(p.read_bytes()))[0])
    for p in cut:
        assert p.name.endswith(".gz"), p.name
        r = subprocess.run(["gzip", "-d", "-c", str(p)], capture_output=True)
        assert r.returncode == 0, r.stderr
        body = r.stdout
        assert len(body) >= MIB, f"{p.name}: {len(body)} bytes uncompressed, cut before 1 MiB"
        assert len(body) - (len(lines(body)[-1]) + 1) < MIB, f"{p.name}: {len(body)} bytes, more than one record past 1 MiB"
        assert p.stat().st_size * 4 < len(body), f"{p.name}: {p.stat().st_size} bytes on disk"
    assert server.stop(signal.SIGTERM) == 0
    objs = server.objects("bkt")
    assert len(objs) == 3 and all(p.name.endswith(".gz") for p in objs)
    bodies = []
    for p in objs:
        r = subprocess.run(["gzip", "-d", "-c", str(p)], capture_output=True)
        assert r.returncode == 0, r.stderr
        bodies.append(lines(r.stdout))
    bodies.sort(key=lambda ls: int(ls[0][4:10]))
    assert [line for b in bodies for line in b] == records
    for key in server.keys("bkt"):
        prefix, _, ext = split_key(key, "zipped")
        assert ext == ".gz"


def test_sigterm_flushes_buffers_below_their_hints(make_server):
    """With IntervalInSeconds 900 and SizeInMBs 128 nothing is delivered while
    running; SIGTERM delivers every stream's buffer (here a plain and a GZIP
    one) as one object holding every record in order, keyed by the time of
    the first put, and exits 0."""
    server = make_server(config=config(
        stream_config(name="held", bucket="bkt", size_mb=128, interval=900),
        stream_config(name="held-gz", bucket="bkt-gz", size_mb=128, interval=900, compression="GZIP"),
    ))
    c = server.client()
    records = [json.dumps({"i": i}).encode() for i in range(300)]
    times = {}
    for name in ("held", "held-gz"):
        before = time.time()
        put_batches(c, name, records[:100])
        times[name] = (before, time.time())
        put_batches(c, name, records[100:])
        c.put_record(DeliveryStreamName=name, Record={"Data": b"last"})
    time.sleep(1.5)
    assert server.objects("bkt") == [] and server.objects("bkt-gz") == [], "delivered before either hint was reached"
    assert server.stop(signal.SIGTERM) == 0, server.log()[-2000:]
    for name, bucket in (("held", "bkt"), ("held-gz", "bkt-gz")):
        objs = server.objects(bucket)
        assert len(objs) == 1, [p.name for p in objs]
        body = objs[0].read_bytes()
        if name == "held-gz":
            assert objs[0].name.endswith(".gz")
            body = gzip.decompress(body)
        assert lines(body) == records + [b"last"]
        _, at, _ = split_key(server.keys(bucket)[0], name)
        before, after = times[name]
        assert utc_second(before) <= at <= utc_second(after)


SPOOL_COMPRESSIONS = {"UNCOMPRESSED": "", "GZIP": ".gz", "ZSTD": ".zst", "Snappy": ".snappy"}


def spooled(server):
    """The object files open buffers are writing in the scratch directory."""
    return {p.name: p.stat().st_size for p in (server.data_dir / "tmp").glob("body-*")}


def test_open_buffers_spool_to_disk_and_objects_come_back_whole(make_server):
    """A buffer keeps about a mebibyte of its object in memory and writes the
    rest to a file in the data directory's tmp/ while it is open, so memory
    does not grow with SizeInMBs: with 128 MB / 900 s hints, 5 MB per stream
    is on disk before any object is cut. A SIGKILL leaves those files behind;
    the next start removes them (the records are in the log) and delivers
    every record once. Each multi-MiB object reads back whole with its
    standard tool (gzip -d; zstd -d, one frame), SQL counts every record, and
    nothing is left in tmp/ once the objects are delivered."""
    streams = [stream_config(name=f"sp{i}", bucket="spool", prefix=f"sp{i}/", size_mb=128, interval=900, compression=c)
               for i, c in enumerate(SPOOL_COMPRESSIONS)]
    server = make_server(config=config(*streams))
    c = server.client()
    n = 20_000
    records = {f"sp{i}": [json.dumps({"s": i, "i": k, "pad": os.urandom(100).hex()}).encode() for k in range(n)]
               for i in range(len(streams))}
    for name, rs in records.items():
        put_batches(c, name, rs, per_call=500)
    before = wait_for(lambda: (s := spooled(server)) and len(s) == len(streams) and sum(s.values()) > 3 * MIB and s,
                      timeout=60, what="every stream's open buffer spooled to tmp/")
    assert server.objects("spool") == [], "nothing is cut below the hints"
    server.kill()
    assert set(spooled(server)) == set(before), "a SIGKILL leaves the spool files"
    server.start()
    assert not set(spooled(server)) & set(before), "a start removes what the last run spooled"
    assert server.stop(signal.SIGTERM) == 0
    assert spooled(server) == {}, "delivered objects leave nothing in tmp/"
    objs = server.objects("spool")
    assert len(objs) == len(streams), [p.name for p in objs]
    for i, (compression, ext) in enumerate(SPOOL_COMPRESSIONS.items()):
        (p,) = [p for p in objs if f"/sp{i}/" in str(p)]
        assert p.name.endswith(ext) and (ext or "." not in p.name), p.name
        tool = {"GZIP": ["gzip", "-d", "-c"], "ZSTD": ["zstd", "-d", "-c", "-q"]}.get(compression)
        if compression == "UNCOMPRESSED":
            body = p.read_bytes()
        elif tool:
            r = subprocess.run(tool + [str(p)], capture_output=True)
            assert r.returncode == 0, r.stderr
            body = r.stdout
        else:
            body = None
        if body is not None:
            assert lines(body) == records[f"sp{i}"], f"{compression}: the records, in order, once"
        if compression == "ZSTD":
            listed = subprocess.run(["zstd", "-l", str(p)], capture_output=True, text=True)
            assert listed.returncode == 0, listed.stderr
            frames = int(listed.stdout.splitlines()[1].split()[0])
            assert frames == 1, listed.stdout
    server.start()
    for i in range(len(streams)):
        r = subprocess.run([hydrant_bin(), "query", f"SELECT count(*), count(DISTINCT i), min(s), max(s) FROM sp{i}",
                            "--endpoint", server.endpoint, "--format", "json"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["rows"] == [[n, n, i, i]], list(SPOOL_COMPRESSIONS)[i]
