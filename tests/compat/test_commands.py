"""hydrant's own commands, as a user runs them: generate, demo, bench."""

import json
import re
import subprocess

from conftest import free_port, hydrant_bin, stream_config

EVENTS = {"JOIN", "LEAVE", "OPEN_CHAT", "SUBSCRIBE", "SEND_MESSAGE"}


def lines(server, bucket):
    out = []
    for p in server.objects(bucket):
        out += p.read_bytes().splitlines()
    return out


def check_event(raw):
    e = json.loads(raw)
    assert set(e) == {"event_time", "event_name", "user"}
    assert e["event_name"] in EVENTS
    assert 0 <= e["user"] <= 100
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", e["event_time"])


def test_generate_sends_the_tutorial_events(server):
    server.client().create_delivery_stream(**stream_config(name="gen", bucket="gen-bucket"))
    for batch in ("1", "50"):
        r = subprocess.run(
            [hydrant_bin(), "generate", "--endpoint", server.endpoint, "--stream", "gen",
             "--rate", "0", "--count", "120", "--batch", batch],
            capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert "120 records sent to gen" in r.stderr
    assert server.stop() == 0
    got = lines(server, "gen-bucket")
    assert len(got) == 240
    for raw in got:
        check_event(raw)


def test_generate_reports_an_unknown_stream(server):
    r = subprocess.run(
        [hydrant_bin(), "generate", "--endpoint", server.endpoint, "--stream", "nope", "--count", "5"],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode != 0
    assert "ResourceNotFoundException" in r.stderr


def test_demo_runs_the_tutorial_stream_and_says_where_files_land(tmp_path):
    port = free_port()
    data = tmp_path / "demo"
    r = subprocess.run(
        [hydrant_bin(), "demo", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data),
         "--rate", "2000", "--count", "3000"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lake = data / "lake" / "data.staging.aws" / "events" / "my-event-staging"
    assert str(lake) in r.stdout
    files = [p for p in lake.rglob("*") if p.is_file()]
    assert files, r.stdout
    assert f"{len(files)} objects in" in r.stdout
    got = [l for p in files for l in p.read_bytes().splitlines()]
    assert len(got) == 3000
    for raw in got:
        check_event(raw)


def test_bench_prints_a_summary_with_throughput_and_latency(tmp_path):
    r = subprocess.run(
        [hydrant_bin(), "bench", "--duration-seconds", "1", "--runs", "1", "--concurrency", "2", "--batch", "50"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    m = re.search(r"median hydrant: (\d+) records/s, ([\d.]+) MB/s, ack latency p50 ([\d.]+) ms, p99 ([\d.]+) ms, p99.9 ([\d.]+) ms, errors (\d+)", r.stdout)
    assert m, r.stdout
    assert int(m.group(1)) > 0
    assert float(m.group(3)) <= float(m.group(4)) <= float(m.group(5))
    assert int(m.group(6)) == 0
    # Its own server and data are gone afterwards.
    assert not any(p.name.startswith(".hydrant-bench-") for p in tmp_path.iterdir())
