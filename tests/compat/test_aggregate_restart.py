"""Aggregates are as exact as the log: SIGKILL hydrant while it aggregates,
restart it each time, and the windows and the closed windows sent to the
output stream are those of a run that was never interrupted.

Both runs get the same records in the same order (event-time windows, some
records out of order within the allowed lateness, some late, some invalid).
The interrupted run is killed at random moments between acknowledged puts:
while records are being aggregated, while state is being saved, while closed
windows are being appended to the output stream. Its seed is printed;
HYDRANT_CRASH_SEED=<seed> replays the kill schedule.
"""

import json
import random
import signal
import time
import urllib.request

from conftest import stream_config, wait_for
from test_crash import crash_seed

SOURCES = ["web", "ios", "android", "partner"]
RECORDS = 3000
BATCH = 100
KILLS = 6
# 2026-11-26T13:00:00Z in seconds since the epoch.
T0 = 1_795_698_000


def config(segment_mb=1):
    def stream(name):
        return json.dumps(stream_config(name=name, bucket="lake", prefix=f"{name}/", interval=1))

    return f"""
log: {{ segment_mb: {segment_mb} }}
delivery_streams:
  - {stream("purchases")}
  - {stream("windows-out")}
aggregates:
  purchases:
    - name: revenue
      window: {{ type: tumbling, size_seconds: 10 }}
      time: {{ field: ts, format: epoch_millis }}
      allowed_lateness_seconds: 5
      horizon_seconds: 86400
      group_by: [source]
      measures:
        - {{ op: sum, field: amount, name: revenue }}
        - {{ op: count, name: orders }}
        - {{ op: max, field: amount }}
        - {{ op: avg, field: amount }}
        - {{ op: approx_distinct, field: user, name: buyers }}
      output_stream: windows-out
    - name: visits
      window: {{ type: session, gap_seconds: 7 }}
      time: {{ field: ts, format: epoch_millis }}
      allowed_lateness_seconds: 5
      horizon_seconds: 86400
      group_by: [user]
      measures:
        - {{ op: count, name: events }}
        - {{ op: sum, field: amount }}
      output_stream: windows-out
"""


def records():
    """The same input for both runs: event times advance ~0.2 s a record,
    with jitter of up to 4 s (inside the lateness), a few records 30 s late,
    a few invalid ones; then one record far ahead that closes every window."""
    rng = random.Random(1234)
    out = []
    for i in range(RECORDS):
        ts = (T0 + i // 5) * 1000 + rng.randrange(-4000, 4000)
        if i % 97 == 0:
            ts -= 30_000
        rec = {"ts": ts, "source": SOURCES[i % 4], "amount": round(rng.uniform(0.01, 500), 2), "user": f"u{rng.randrange(60)}"}
        if i % 211 == 0:
            rec["ts"] = "not a time"
        out.append(rec)
    out.append({"ts": (T0 + RECORDS // 5 + 3600) * 1000, "source": "web", "amount": 0, "user": "closer"})
    return out


def put(client, batch):
    r = client.put_record_batch(DeliveryStreamName="purchases", Records=[{"Data": json.dumps(x)} for x in batch])
    assert r["FailedPutCount"] == 0, r


def snapshots(server):
    with urllib.request.urlopen(server.endpoint + "/-/api/aggregates", timeout=10) as r:
        doc = json.load(r)
    return {a["snapshot"]["aggregate"]: a["snapshot"] for a in doc["aggregates"]}


def output_records(server):
    out = []
    for path in server.objects("lake"):
        if "windows-out/" in str(path):
            out += [json.loads(line) for line in path.read_text().splitlines() if line]
    return out


def settle(server, closer_ms):
    """Waits until every window has closed and every closed one is in the
    lake, then stops hydrant with SIGTERM (which delivers what is buffered).
    Returns (snapshots, output records)."""
    def closed_everything():
        snaps = snapshots(server)
        return all(s["watermark_ms"] is not None and s["watermark_ms"] >= closer_ms - 5000 for s in snaps.values()) and snaps

    snaps = wait_for(closed_everything, timeout=120, what="the watermark to pass every window")
    closed = sum(1 for s in snaps.values() for w in s["windows"] if w["closed"])
    wait_for(lambda: len(output_records(server)) >= closed, timeout=120, what=f"{closed} closed windows in the lake")
    final = snapshots(server)
    assert server.stop(signal.SIGTERM) == 0, server.log()[-3000:]
    return final, output_records(server)


def key(w):
    return json.dumps(w, sort_keys=True)


def test_windows_after_sigkills_equal_an_uninterrupted_run(make_server):
    recs = records()
    closer_ms = recs[-1]["ts"]
    batches = [recs[i:i + BATCH] for i in range(0, len(recs), BATCH)]

    plain = make_server(config())
    client = plain.client()
    for b in batches:
        put(client, b)
    want_snaps, want_out = settle(plain, closer_ms)

    seed = crash_seed()
    replay = f"HYDRANT_CRASH_SEED={seed}"
    print(f"aggregate restarts: {KILLS} kills; replay with {replay}", flush=True)
    rng = random.Random(seed)
    kill_after = sorted(rng.sample(range(1, len(batches) - 1), KILLS))
    crashed = make_server(config())
    client = crashed.client(connect_timeout=2, read_timeout=30)
    for i, b in enumerate(batches):
        put(client, b)
        if kill_after and i == kill_after[0]:
            kill_after.pop(0)
            # Sometimes at once, sometimes after a state save (every 5 s).
            time.sleep(rng.choice([0, rng.uniform(0, 1.5), rng.uniform(4.5, 7)]))
            crashed.kill()
            crashed.start(timeout=60)
            client = crashed.client(connect_timeout=2, read_timeout=30)
    got_snaps, got_out = settle(crashed, closer_ms)

    for name, want in want_snaps.items():
        got = got_snaps[name]
        assert want["windows"], f"{name}: the reference run has no windows"
        assert any(w["closed"] for w in want["windows"]), name
        assert not any(w.get("incomplete") for w in want["windows"] + got["windows"]), f"{name}: nothing was lost [{replay}]"
        assert [key(w) for w in got["windows"]] == [key(w) for w in want["windows"]], f"{name}: windows differ [{replay}]"
        for field in ("watermark_ms", "late_count", "overflow_count", "invalid_counts"):
            assert got[field] == want[field], f"{name}.{field}: {got[field]} != {want[field]} [{replay}]"
    assert want_snaps["revenue"]["late_count"] > 0 and want_snaps["revenue"]["invalid_counts"], "the input has late and invalid records"

    closed = sum(1 for s in want_snaps.values() for w in s["windows"] if w["closed"])
    assert len(want_out) == closed, "the reference run sent every closed window once"
    got_keys = [key(r) for r in got_out]
    dups = {k for k in got_keys if got_keys.count(k) > 1}
    assert not dups, f"closed windows sent twice [{replay}]: {sorted(dups)[:5]}"
    assert sorted(got_keys) == sorted(key(r) for r in want_out), f"output records differ [{replay}]"


def test_an_aggregate_whose_config_changed_marks_its_first_windows_incomplete(make_server):
    """A saved state from another config is set aside: the aggregate starts
    afresh where the saved state ended, and the windows that may miss records
    read before say `incomplete`; the later ones do not."""
    def cfg(measures):
        s = json.dumps(stream_config(name="purchases", bucket="lake", prefix="p/", interval=1))
        return f"""
delivery_streams:
  - {s}
aggregates:
  purchases:
    - name: revenue
      window: {{ type: tumbling, size_seconds: 10 }}
      time: {{ field: ts, format: epoch_millis }}
      measures: {measures}
"""

    server = make_server(cfg("[ { op: count } ]"))
    client = server.client()
    put(client, [{"ts": (T0 + i // 10) * 1000, "amount": 1} for i in range(250)])
    saved = server.data_dir / "streams" / "purchases" / "aggregates.json"
    wait_for(lambda: saved.exists() and json.loads(saved.read_text())["offset"] == 250, timeout=60,
             what="the aggregate state saved with the 250 records")
    assert server.stop(signal.SIGTERM) == 0
    server.config_path.write_text(cfg("[ { op: count }, { op: sum, field: amount } ]"))
    server.start()
    put(server.client(), [{"ts": (T0 + 25 + i // 10) * 1000, "amount": 2} for i in range(200)])
    snap = wait_for(lambda: (s := snapshots(server)["revenue"])["watermark_ms"] == (T0 + 44) * 1000 and s,
                    timeout=60, what="the new records aggregated")
    flags = {w["start_ms"] // 1000 - T0: bool(w.get("incomplete")) for w in snap["windows"]}
    assert flags == {20: True, 30: False, 40: False}, flags
    counts = {w["start_ms"] // 1000 - T0: w["measures"]["count"] for w in snap["windows"]}
    assert counts == {20: 50, 30: 100, 40: 50}, counts
