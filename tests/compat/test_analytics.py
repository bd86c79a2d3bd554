"""Continuous aggregates, the live feed and Prometheus metrics, end to end.

Records go in through the Firehose API; results are read back the way a
dashboard or Prometheus reads them: /-/api/aggregates, the Server-Sent Events
feed /-/api/live, /-/metrics, and the lake (closed windows in an output stream).
"""

import json
import threading
import time
import urllib.request
from collections import defaultdict

import pytest

from conftest import Server, stream_config, wait_for

SOURCES = ["web", "ios", "android", "partner"]


def stream_yaml(name, bucket="lake-bucket", interval=1):
    req = stream_config(name=name, bucket=bucket, prefix=f"{name}/", interval=interval)
    return json.dumps(req)


def config(extra_aggregates="", lateness=0):
    return f"""
delivery_streams:
  - {stream_yaml("purchases")}
  - {stream_yaml("windows-out")}
aggregates:
  purchases:
    - name: revenue_per_minute
      window: {{ type: tumbling, size_seconds: 60 }}
      time: {{ field: ts, format: iso8601 }}
      allowed_lateness_seconds: {lateness}
      group_by: [source]
      measures:
        - {{ op: sum, field: amount, name: revenue }}
        - {{ op: count, name: orders }}
        - {{ op: max, field: amount }}
        - {{ op: approx_distinct, field: user, name: buyers }}
      output_stream: windows-out
{extra_aggregates}
"""


def put(client, stream, records):
    resp = client.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": json.dumps(r)} for r in records])
    assert resp["FailedPutCount"] == 0


def get_json(server, path):
    with urllib.request.urlopen(server.endpoint + path, timeout=5) as r:
        return json.load(r)


def windows(server, aggregate):
    snap = [a["snapshot"] for a in get_json(server, "/-/api/aggregates")["aggregates"] if a["snapshot"]["aggregate"] == aggregate]
    assert len(snap) == 1
    return snap[0]


def purchase(minute, second, source, amount, user):
    return {"ts": f"2026-11-24T13:{minute:02d}:{second:02d}.000", "source": source, "amount": amount, "user": user}


def test_windows_hold_exactly_what_was_sent(make_server):
    server = make_server(config())
    client = server.client()
    records = []
    for i in range(300):
        records.append(purchase(5 + i // 100, i % 60, SOURCES[i % 4], round(1 + (i * 7919 % 1000) / 10, 2), i % 37))
    for k in range(0, 300, 100):
        put(client, "purchases", records[k:k + 100])

    expected = defaultdict(lambda: {"revenue": 0.0, "orders": 0, "max_amount": 0.0, "users": set()})
    for r in records:
        e = expected[(13 * 60 + int(r["ts"][14:16]), r["source"])]
        e["revenue"] += r["amount"]
        e["orders"] += 1
        e["max_amount"] = max(e["max_amount"], r["amount"])
        e["users"].add(r["user"])

    def complete():
        snap = windows(server, "revenue_per_minute")
        return snap if sum(w["measures"]["orders"] for w in snap["windows"]) == 300 else None

    snap = wait_for(complete, what="all 300 records in the aggregate")
    got = {}
    for w in snap["windows"]:
        minute = int(w["start"][11:13]) * 60 + int(w["start"][14:16])
        assert w["end_ms"] - w["start_ms"] == 60_000
        got[(minute, w["group"]["source"])] = w["measures"]
    assert set(got) == set(expected)
    for key, e in expected.items():
        m = got[key]
        assert m["orders"] == e["orders"]
        assert m["revenue"] == pytest.approx(e["revenue"], abs=1e-6)
        assert m["max_amount"] == pytest.approx(e["max_amount"])
        # HyperLogLog is exact-ish at this size (linear counting).
        assert abs(m["buyers"] - len(e["users"])) <= 1
    # The watermark follows the newest event time; older minutes are closed.
    assert snap["watermark"].startswith("2026-11-24T13:07:59")
    closed = {w["start"][11:16] for w in snap["windows"] if w["closed"]}
    assert closed == {"13:05", "13:06"}


def test_late_records_are_counted_not_added_and_reach_metrics(make_server):
    server = make_server(config())
    client = server.client()
    put(client, "purchases", [purchase(10, 0, "web", 5, 1), purchase(20, 0, "web", 5, 2)])
    put(client, "purchases", [purchase(10, 30, "web", 100, 3)])  # its window closed at 13:11

    snap = wait_for(lambda: (s := windows(server, "revenue_per_minute"))["late_count"] == 1 and s, what="a late record")
    ten = [w for w in snap["windows"] if w["start"][11:16] == "13:10"]
    assert [w["measures"]["orders"] for w in ten] == [1]
    assert ten[0]["measures"]["revenue"] == 5

    with urllib.request.urlopen(server.endpoint + "/-/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'hydrant_aggregate_late_records_total{stream="purchases",aggregate="revenue_per_minute"} 1' in text
    assert 'hydrant_records_in_total{stream="purchases"} 3' in text
    fsyncs = [l for l in text.splitlines() if l.startswith('hydrant_log_fsync_seconds_count{stream="purchases"}')]
    assert fsyncs and int(float(fsyncs[0].split()[-1])) >= 2


def test_invalid_records_are_counted_by_reason(make_server):
    server = make_server(config())
    client = server.client()
    put(client, "purchases", [{"source": "web", "amount": 1}, {"ts": "yesterday", "amount": 1}, purchase(1, 0, "web", "abc", 1), "just a string"])
    snap = wait_for(lambda: (s := windows(server, "revenue_per_minute"))["invalid_counts"] and sum(s["invalid_counts"].values()) == 4 and s, what="4 invalid records")
    assert snap["invalid_counts"] == {"missing_time": 1, "bad_time": 1, "non_numeric_measure": 1, "not_json_object": 1}
    assert snap["windows"] == []


def test_live_feed_streams_window_updates_and_stats(make_server):
    """The live feed sends a stats event on connect and once a second, and
    pushes a window update as soon as a record changes a window.

    "As soon as" is measured in the feed's own clock, not the client's: the
    update must come before the fifth once-a-second stats event that already
    counts the record (so within ~5 s of the server's time; the order of the
    events is the server's, so a slow reader or a loaded machine cannot
    change it). How long the client waits for it is a generous deadline."""
    server = make_server(config())
    client = server.client()
    events = []
    stop = threading.Event()

    def listen():
        with urllib.request.urlopen(server.endpoint + "/-/api/live", timeout=30) as r:
            kind = None
            for raw in r:
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    events.append((time.time(), kind, json.loads(line[5:])))
                if stop.is_set():
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    wait_for(lambda: any(k == "stats" for _, k, _ in events), timeout=60, what="a stats event on connect")
    put(client, "purchases", [purchase(30, 1, "ios", 42.5, 9)])

    def counts_the_record(doc):
        return any(s["name"] == "purchases" and s["records_in"] == 1 for s in doc["streams"])

    def update():
        for k, (_, kind, doc) in enumerate(events):
            if kind == "windows" and doc["aggregate"] == "revenue_per_minute":
                for w in doc["windows"]:
                    if w["group"] == {"source": "ios"} and w["measures"]["revenue"] == 42.5:
                        return k + 1  # the update's position in the feed, counted from 1
        return None

    pos = wait_for(update, timeout=60, what="the window update on the live feed")
    ticks_before = [d for _, kind, d in events[:pos] if kind == "stats" and counts_the_record(d)]
    assert len(ticks_before) < 5, (
        f"the window update came only after {len(ticks_before)} once-a-second stats events that already counted the record"
    )
    stats = [d for _, k, d in events if k == "stats"]
    wait_for(lambda: any(counts_the_record(e[2]) for e in list(events) if e[1] == "stats"), timeout=60, what="stats counting the record")
    assert {s["name"] for s in stats[0]["streams"]} == {"purchases", "windows-out"}
    stop.set()


def test_closed_windows_land_in_the_output_stream(make_server):
    server = make_server(config())
    client = server.client()
    put(client, "purchases", [purchase(40, 5, "web", 10, 1), purchase(40, 6, "partner", 30, 2), purchase(40, 7, "web", 2.5, 3)])
    put(client, "purchases", [purchase(45, 0, "ios", 1, 4)])  # closes 13:40

    def landed():
        rows = [json.loads(l) for p in server.objects("lake-bucket") if "windows-out/" in str(p) for l in p.read_bytes().splitlines()]
        return rows if len(rows) >= 2 else None

    rows = wait_for(landed, timeout=20, what="closed windows in the lake")
    by_source = {r["source"]: r for r in rows}
    assert by_source["web"]["revenue"] == 12.5 and by_source["web"]["orders"] == 2
    assert by_source["partner"]["revenue"] == 30 and by_source["partner"]["orders"] == 1
    assert all(r["window_start"] == "2026-11-24T13:40:00.000Z" and r["window_end"] == "2026-11-24T13:41:00.000Z" for r in rows)


def test_a_bad_aggregate_config_names_the_problem(tmp_path):
    for text, expected in [
        (config().replace("output_stream: windows-out", "output_stream: nowhere"), "output_stream nowhere"),
        (config().replace("aggregates:\n  purchases:", "aggregates:\n  nothing:"), "there is no delivery stream nothing"),
        (config().replace("size_seconds: 60", "size_seconds: 0"), "size_seconds"),
        (config().replace("op: max", "op: median"), "median"),
    ]:
        d = tmp_path / f"d{abs(hash(text))}"
        d.mkdir()
        s = Server(d, text)
        with pytest.raises(RuntimeError) as err:
            s.start(timeout=10)
        assert expected in str(err.value), str(err.value)[-2000:]
