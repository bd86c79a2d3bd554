"""The warehouse destination under faults: hydrant SIGKILLed mid-load, the
warehouse down for a while, and down for longer than RetryOptions allows
(then `hydrant backfill`). Each ends by counting ids in the table.

The crash test loads into the shared PostgreSQL (127.0.0.1:5432, a table of
its own). The outage tests stop a PostgreSQL, so they start a private one
(pg.PrivatePostgres: initdb and pg_ctl from the installed PostgreSQL, on a
free port, in a temporary directory) and never touch the shared server.
"""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections import Counter

import pytest

import pg
from conftest import hydrant_bin, wait_for
from test_crash import ACKED_PER_KILL, BUCKET, KILLS, PRODUCERS, STREAM, Producer, chaos, check_exactly_once

ROLE = "arn:aws:iam::123456789012:role/firehose"
PSQL = shutil.which("psql")


def missing(why):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: the warehouse tests must run)")
    pytest.skip(f"SKIPPED LOUDLY: {why}")


def psql(port, sql, host="127.0.0.1", db="test"):
    r = subprocess.run(
        [PSQL, "-h", host, "-p", str(port), "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-F", ",", "-c", sql],
        capture_output=True, text=True, timeout=60,
    )
    if r.returncode != 0:
        raise RuntimeError(f"psql {sql!r}: {r.stderr}")
    return [line.split(",") for line in r.stdout.splitlines() if line]


def shared_postgres():
    pg.require_pg()
    return pg.PORT


@pytest.fixture
def private_pg():
    """A PostgreSQL of the test's own (pg.PrivatePostgres) with database
    `test`, trust auth; stopped and removed at the end."""
    server = pg.PrivatePostgres(missing)
    yield server
    server.close()


def redshift_stream(port, table, retry=3600):
    return {
        "DeliveryStreamName": STREAM,
        "RedshiftDestinationConfiguration": {
            "RoleARN": ROLE,
            "ClusterJDBCURL": f"jdbc:postgresql://127.0.0.1:{port}/test?connectTimeout=5",
            "Username": "postgres",
            "Password": "trust-ignores-it",
            "CopyCommand": {"DataTableName": table, "DataTableColumns": "p,n,t,pad", "CopyOptions": "JSON 'auto'"},
            "S3Configuration": {
                "RoleARN": ROLE,
                "BucketARN": f"arn:aws:s3:::{BUCKET}",
                "Prefix": "events/",
                "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
                "CompressionFormat": "UNCOMPRESSED",
            },
            "RetryOptions": {"DurationInSeconds": retry},
            "ProcessingConfiguration": {"Enabled": True, "Processors": [{"Type": "AppendDelimiterToRecord"}]},
        },
    }


def config_text(port, table, retry=3600):
    return json.dumps({"log": {"segment_mb": 1}, "delivery_streams": [redshift_stream(port, table, retry)]})


def forget_loads(port, server):
    """Removes this test's rows from the shared ledger (its objects' keys
    are unique to its hydrant), leaving the shared server as it was."""
    keys = [k for k in server.keys(BUCKET) if k.startswith("events/")]
    if keys:
        psql(port, f"DELETE FROM hydrant.loads WHERE stream = '{STREAM}' AND object IN ({','.join(repr(k) for k in keys)})")


def make_table(port):
    table = f"wh_{uuid.uuid4().hex[:10]}"
    psql(port, f"CREATE TABLE {table} (p int NOT NULL, n bigint NOT NULL, t int NOT NULL, pad text)")
    return table


def warehouse_status(server):
    with urllib.request.urlopen(f"{server.endpoint}/-/streams", timeout=10) as r:
        streams = json.load(r)["streams"]
    return next(s for s in streams if s["name"] == STREAM)["warehouse"]


def loaded_everything(server):
    w = warehouse_status(server)
    return w["lag_records"] == 0 and w["objects_queued"] == 0


def table_counts(port, table):
    return Counter({(int(p), int(n), int(t)): int(c) for p, n, t, c in psql(port, f"SELECT p, n, t, count(*) FROM {table} GROUP BY 1, 2, 3")})


def test_sigkill_during_loads_leaves_every_acknowledged_record_once(make_server):
    port = shared_postgres()
    table = make_table(port)
    try:
        server = make_server(config_text(port, table))
        producers = [Producer(server, p, batch=100, pad=60, compressible=False) for p in range(PRODUCERS)]
        # Kills land while loads run: with 1 s buffers a COPY is in flight
        # most of the time, and each kill waits (briefly) for one.
        chaos(server, producers, KILLS, acked_over=ACKED_PER_KILL * KILLS,
              kill_when=lambda s: bool(psql(port, "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'COPY%' AND state = 'active'")))
        server.start()
        wait_for(lambda: loaded_everything(server), timeout=180, interval=0.5, what="every staged object loaded")
        counts = table_counts(port, table)
        check_exactly_once(counts, producers, server, "the table")
        # The ledger holds each staged object once, with the rows it loaded.
        staged = [k for k in server.keys(BUCKET) if k.startswith("events/")]
        keys = ",".join("'" + k + "'" for k in staged)
        ledger = psql(port, f"SELECT count(*), coalesce(sum(rows), 0) FROM hydrant.loads WHERE stream = '{STREAM}' AND object IN ({keys})")
        assert int(ledger[0][0]) == len(staged), f"{ledger[0][0]} ledger rows for {len(staged)} staged objects"
        assert int(ledger[0][1]) == sum(counts.values())
        server.stop()
        forget_loads(port, server)
    finally:
        psql(port, f"DROP TABLE IF EXISTS {table}")


def put_ids(client, ids):
    for start in range(0, len(ids), 200):
        chunk = ids[start:start + 200]
        r = client.put_record_batch(
            DeliveryStreamName=STREAM,
            Records=[{"Data": json.dumps({"p": 0, "n": i, "t": 1, "pad": "x" * 40}).encode()} for i in chunk],
        )
        assert r["FailedPutCount"] == 0, r


def test_outage_retries_and_then_loads_exactly_once(make_server, private_pg):
    table = make_table(private_pg.port)
    server = make_server(config_text(private_pg.port, table))
    client = server.client()
    put_ids(client, list(range(0, 1000)))
    wait_for(lambda: int(psql(private_pg.port, f"SELECT count(*) FROM {table}")[0][0]) == 1000, timeout=60, what="first rows loaded")

    private_pg.stop()
    # Ingest goes on while the warehouse is down: records are acknowledged
    # and staged; loading retries.
    put_ids(client, list(range(1000, 3000)))
    wait_for(lambda: warehouse_status(server)["last_error"] is not None, timeout=60, what="a load failing")
    staged_before = warehouse_status(server)["objects_staged"]
    put_ids(client, list(range(3000, 4000)))
    wait_for(lambda: warehouse_status(server)["objects_staged"] > staged_before, timeout=60, what="staging during the outage")
    w = warehouse_status(server)
    assert w["lag_records"] >= 3000, w
    time.sleep(3)  # several retries against the stopped server
    assert warehouse_status(server)["manifests_failed"] == 0

    private_pg.start()
    wait_for(lambda: loaded_everything(server), timeout=120, interval=0.5, what="the backlog loaded after the outage")
    counts = Counter(int(n) for (n,) in psql(private_pg.port, f"SELECT n FROM {table}"))
    assert sorted(counts) == list(range(4000)), f"missing: {sorted(set(range(4000)) - set(counts))[:10]}"
    assert max(counts.values()) == 1, f"duplicates: {[n for n, c in counts.items() if c > 1][:10]}"
    w = warehouse_status(server)
    assert w["rows_loaded"] == 4000 and w["last_error"] is None and w["manifests_failed"] == 0, w


def test_expired_retries_write_manifests_that_backfill_loads_once(make_server, private_pg):
    table = make_table(private_pg.port)
    private_pg.stop()
    server = make_server(config_text(private_pg.port, table, retry=1))
    put_ids(server.client(), list(range(500)))
    wait_for(lambda: warehouse_status(server)["manifests_failed"] >= 1 and loaded_everything(server),
             timeout=120, interval=0.5, what="manifests in the error output")
    manifests = [k for k in server.keys(BUCKET) if k.endswith(".manifest")]
    assert manifests, server.keys(BUCKET)
    for m in manifests:
        assert m.startswith("redshift-failed/"), m
        entries = json.loads((server.lake / BUCKET / m).read_text())["entries"]
        for e in entries:
            assert e["mandatory"] is True
            key = e["url"].removeprefix(f"s3://{BUCKET}/")
            assert (server.lake / BUCKET / key).is_file(), f"{m} names a missing object {key}"

    private_pg.start()
    args = [hydrant_bin(), "backfill", STREAM, "--data-dir", str(server.data_dir), "--config", str(server.config_path)]
    first = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "loaded" in first.stdout, first.stdout
    rows = sorted(int(n) for (n,) in psql(private_pg.port, f"SELECT n FROM {table}"))
    assert rows == list(range(500)), f"{len(rows)} rows after backfill"

    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already loaded" in again.stdout and " loaded " not in again.stdout.replace("already loaded", ""), again.stdout
    assert int(psql(private_pg.port, f"SELECT count(*) FROM {table}")[0][0]) == 500

    # A manifest naming another bucket is refused, and loads nothing.
    bad = server.lake / BUCKET / "redshift-failed" / "forged.manifest"
    bad.write_text(json.dumps({"entries": [{"url": "s3://other-bucket/x", "mandatory": True}]}))
    forged = subprocess.run(args[:3] + ["--manifest", "redshift-failed/forged.manifest"] + args[3:], capture_output=True, text=True, timeout=60)
    assert forged.returncode != 0 and "staging bucket" in forged.stdout, forged.stdout + forged.stderr
    server.stop()


def test_an_object_queued_again_after_its_commit_loads_nothing(make_server):
    """The narrowest crash window: hydrant dies after an object's COPY
    committed and before its queue entry is removed (or a replay queues the
    same object again). The entry is then there at the next start; the
    ledger must make its second load a no-op. The entry is put back exactly
    as hydrant wrote it, then hydrant is SIGKILLed and restarted."""
    port = shared_postgres()
    table = make_table(port)
    try:
        server = make_server(config_text(port, table))
        queue = server.data_dir / "streams" / STREAM / "loads"
        put_ids(server.client(), list(range(300)))
        # Catch an entry while it is queued: read each one as it appears.
        entries = {}
        def saw_all():
            for f in queue.glob("*.json"):
                try:
                    entries[f.name] = f.read_bytes()
                except FileNotFoundError:
                    pass
            return loaded_everything(server) and entries
        wait_for(saw_all, timeout=60, interval=0.001, what="objects queued and loaded")
        assert int(psql(port, f"SELECT count(*) FROM {table}")[0][0]) == 300
        server.kill()
        for name, body in entries.items():
            staged = json.loads(body)
            assert (server.lake / BUCKET / staged["key"]).is_file()
            (queue / name).write_bytes(body)
        server.start()
        wait_for(lambda: loaded_everything(server), timeout=60, interval=0.2, what="the queue drained")
        assert not list(queue.glob("*.json"))
        counts = Counter(int(n) for (n,) in psql(port, f"SELECT n FROM {table}"))
        assert sorted(counts) == list(range(300)) and max(counts.values()) == 1, \
            f"{sum(counts.values())} rows for 300 records after loading {len(entries)} objects again"
        server.stop()
        forget_loads(port, server)
    finally:
        psql(port, f"DROP TABLE IF EXISTS {table}")


def test_the_retry_clock_survives_restarts(make_server, private_pg):
    """RetryOptions counts from an object's first failure, across restarts:
    a hydrant restarted during an outage must not start the count again."""
    table = make_table(private_pg.port)
    private_pg.stop()
    server = make_server(config_text(private_pg.port, table, retry=3600))
    put_ids(server.client(), list(range(100)))
    queue = server.data_dir / "streams" / STREAM / "loads"

    def failing_since():
        entries = [json.loads(f.read_text()) for f in queue.glob("*.json")]
        marks = [e.get("failing_since_ms") for e in entries]
        return marks if marks and all(marks) else None

    before = wait_for(failing_since, timeout=60, interval=0.1, what="the first failure recorded")
    server.kill()
    server.start()
    wait_for(lambda: warehouse_status(server)["last_error"] is not None, timeout=60, what="loading failing again")
    assert failing_since() == before, "a restart reset the retry clock"
    private_pg.start()
    wait_for(lambda: loaded_everything(server), timeout=120, interval=0.5, what="loaded after the outage")
    assert sorted(int(n) for (n,) in psql(private_pg.port, f"SELECT n FROM {table}")) == list(range(100))
    server.stop()


def test_a_damaged_queue_entry_is_reported_not_fatal(make_server):
    """An entry of the load queue that cannot be read (damage on disk) is
    kept and named in the stream's status; hydrant and the other loads go on."""
    port = shared_postgres()
    table = make_table(port)
    try:
        server = make_server(config_text(port, table))
        server.stop()
        damaged = server.data_dir / "streams" / STREAM / "loads" / f"{10**12:020}.json"
        damaged.write_bytes(b'{"key": "events/x", "fir')
        server.start()
        put_ids(server.client(), list(range(50)))
        wait_for(lambda: int(psql(port, f"SELECT count(*) FROM {table}")[0][0]) == 50, timeout=60, what="the other loads")
        error = warehouse_status(server)["last_error"]
        assert error is None or str(damaged) in error["message"], error
        assert damaged.exists(), "the damaged entry was removed"
        server.stop()
        server.start()
        w = wait_for(lambda: warehouse_status(server)["last_error"], timeout=30, what="the damaged entry reported")
        assert str(damaged) in w["message"], w
        server.stop()
        forget_loads(port, server)
    finally:
        psql(port, f"DROP TABLE IF EXISTS {table}")
