"""A MariaDB of the tests' own, for change data capture.

`PrivateMariaDB` runs `mariadb-install-db` and `mariadbd` from the installed
packages in a temporary directory, on a free port, with the row-based binlog
on, so the tests can stop it, restart it, purge its binlog and change its
settings without touching the machine's shared server. Where the binaries
are missing the tests skip loudly, and fail when CI=true.

Tests write to it with PyMySQL, and read what hydrant wrote from the lake:
`changes()` reads every change record of a stream, `replay()` applies them
in source order (`source.file`, `source.pos`, snapshot rows before the
binlog events at the same position, `source.row`) to rebuild each table.
"""

import contextlib
import json
import random
import threading
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pymysql
import pytest

from conftest import free_port

SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:cdc"
USER, PASSWORD = "hydrant", "cdc-secret-pw"
ROLE = "arn:aws:iam::123456789012:role/firehose"


def missing(why: str):
    message = f"CDC TEST NOT RUN: needs a private MariaDB: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


class PrivateMariaDB:
    """One mariadbd in a temporary directory. Its `hydrant` user has the
    privileges change data capture needs."""

    def __init__(self, extra_args: list[str] | None = None):
        self.install = _binary("mariadb-install-db")
        self.server = _binary("mariadbd")
        if not self.install or not self.server:
            missing("mariadb-install-db or mariadbd is not installed (Debian: mariadb-server)")
        self.root = tempfile.mkdtemp(prefix="hydrant-mariadb-", dir="/tmp")
        self.data = os.path.join(self.root, "data")
        self.socket = os.path.join(self.root, "sock")
        self.port = free_port()
        self.extra_args = extra_args or []
        self.proc = None
        user = ["--user=root"] if os.geteuid() == 0 else []
        r = subprocess.run(
            [self.install, "--no-defaults", f"--datadir={self.data}", *user,
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, timeout=120,
        )
        if r.returncode != 0:
            missing(f"mariadb-install-db failed: {r.stderr.strip()[-500:]}")
        self.start()
        with self.root_connection() as c:
            c.cursor().execute(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
            c.cursor().execute(
                f"GRANT SELECT, INSERT, UPDATE, CREATE, RELOAD, REPLICATION SLAVE, BINLOG MONITOR "
                f"ON *.* TO '{USER}'@'%'"
            )

    def start(self, timeout: float = 60.0):
        user = ["--user=root"] if os.geteuid() == 0 else []
        args = [
            self.server, "--no-defaults", *user, f"--datadir={self.data}", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--socket={self.socket}",
            f"--pid-file={os.path.join(self.root, 'pid')}", f"--log-error={os.path.join(self.root, 'err.log')}",
            f"--log-bin={os.path.join(self.data, 'binlog')}", "--binlog-format=ROW", "--server-id=1",
            "--innodb-buffer-pool-size=128M", "--innodb-flush-log-at-trx-commit=2", "--skip-name-resolve",
            "--max-connections=200", "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                missing(f"mariadbd exited with {self.proc.returncode}: {self.error_log()[-800:]}")
            try:
                self.root_connection().close()
                return
            except pymysql.err.OperationalError:
                time.sleep(0.1)
        missing(f"mariadbd did not take connections within {timeout}s: {self.error_log()[-800:]}")

    def error_log(self) -> str:
        p = os.path.join(self.root, "err.log")
        return open(p, errors="replace").read() if os.path.exists(p) else ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def root_connection(self, db: str | None = None):
        return pymysql.connect(unix_socket=self.socket, user="root", database=db, autocommit=True, connect_timeout=5)

    def connect(self, db: str | None = None):
        """A connection as root over TCP, autocommit, for the test's own writes."""
        return pymysql.connect(
            host="127.0.0.1", port=self.port, user="root", database=db, autocommit=True,
            connect_timeout=5, charset="utf8mb4",
        )

    def execute(self, sql: str, args=None, db: str | None = None):
        with self.root_connection(db) as c:
            cur = c.cursor()
            cur.execute(sql, args)
            return cur.fetchall()

    def config(self, secret_user: str = USER, secret_password: str = PASSWORD) -> str:
        """hydrant's config file: the secret the streams sign in with."""
        return (
            "secrets:\n"
            f'  "{SECRET_ARN}":\n'
            f'    username: "{secret_user}"\n'
            f'    password: "{secret_password}"\n'
        )


def cdc_request(name: str, port: int, databases, tables, *, bucket="lake", prefix="cdc/", interval=1,
                columns=None, surrogate_keys=None, watermark="hydrant_meta.watermarks", partition_by_table=False,
                **extra) -> dict:
    """A CreateDeliveryStream request for a DatabaseAsSource stream into the lake."""
    source = {
        "Type": "MySQL",
        "Endpoint": "127.0.0.1",
        "Port": port,
        "SSLMode": "Disabled",
        "Databases": {"Include": list(databases)},
        "Tables": {"Include": list(tables)},
        "SnapshotWatermarkTable": watermark,
        "DatabaseSourceAuthenticationConfiguration": {
            "SecretsManagerConfiguration": {"SecretARN": SECRET_ARN, "RoleARN": ROLE, "Enabled": True}
        },
        "DatabaseSourceVPCConfiguration": {"VpcEndpointServiceName": "com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0"},
    }
    if columns is not None:
        source["Columns"] = columns
    if surrogate_keys is not None:
        source["SurrogateKeys"] = surrogate_keys
    source.update(extra)
    dest = {
        "RoleARN": ROLE,
        "BucketARN": f"arn:aws:s3:::{bucket}",
        "Prefix": prefix,
        "ErrorOutputPrefix": "errors/",
        "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": interval},
        "CompressionFormat": "UNCOMPRESSED",
        "ProcessingConfiguration": {"Enabled": True, "Processors": [{"Type": "AppendDelimiterToRecord"}]},
    }
    if partition_by_table:
        dest["Prefix"] = prefix + "!{partitionKeyFromQuery:table}/"
        dest["DynamicPartitioningConfiguration"] = {"Enabled": True}
        dest["ProcessingConfiguration"]["Processors"].insert(0, {
            "Type": "MetadataExtraction",
            "Parameters": [
                {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{table: .source.table}"},
                {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"},
            ],
        })
    return {
        "DeliveryStreamName": name,
        "DeliveryStreamType": "DatabaseAsSource",
        "DatabaseSourceConfiguration": source,
        "ExtendedS3DestinationConfiguration": dest,
    }


def changes(server, bucket="lake", prefix="cdc/") -> list[dict]:
    """Every change record in the lake under `prefix`, in source order."""
    out = []
    root = server.lake / bucket / prefix
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        if p.is_file():
            for line in p.read_bytes().splitlines():
                if line.strip():
                    out.append(json.loads(line))
    out.sort(key=order)
    return out


def order(c: dict):
    s = c["source"]
    return (s["file"], s["pos"], 0 if s["snapshot"] else 1, s["row"])


def replay(records: list[dict]) -> dict:
    """Applies change records in order: {(namespace, table): {key-json: row}},
    the namespace being the database (MySQL) or the schema (PostgreSQL)."""
    tables: dict = {}
    for c in records:
        s = c["source"]
        t = tables.setdefault((s.get("schema", s["db"]), s["table"]), {})
        op = c["op"]
        if op == "t":
            t.clear()
            continue
        if op in ("u", "d") and c["before"] is not None:
            before_key = {k: c["before"][k] for k in c["key"]}
            t.pop(json.dumps(before_key, sort_keys=True), None)
        if op in ("c", "u", "r"):
            t[json.dumps(c["key"], sort_keys=True)] = c["after"]
    return tables


@pytest.fixture(scope="module")
def mdb():
    """A private MariaDB for the test module."""
    m = PrivateMariaDB()
    yield m
    m.close()


@pytest.fixture
def db(mdb, request):
    """A database of the test's own on the private server."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[5:55]
    mdb.execute(f"DROP DATABASE IF EXISTS {name}")
    mdb.execute(f"CREATE DATABASE {name}")
    yield name
    mdb.execute(f"DROP DATABASE IF EXISTS {name}")


@contextlib.contextmanager
def running_writers(mdb, db, count=4, start_id=10_000_000):
    """Four writers inserting, updating and deleting `items` while the
    block runs (ids they insert are their own); yields the errors they met,
    complete once the block is left."""
    errors = []

    def work(n):
        rng = random.Random(n)
        next_id = start_id + n * 1_000_000
        try:
            with mdb.connect(db) as c:
                cur = c.cursor()
                while not stop.is_set():
                    op = rng.random()
                    if op < 0.4:
                        cur.execute("INSERT INTO items (id, v, note) VALUES (%s, %s, %s)", (next_id, rng.randrange(1000), f"w{n}"))
                        next_id += 1
                    elif op < 0.8:
                        cur.execute("UPDATE items SET v = v + 1, note = %s WHERE id = %s", (f"u{n}", rng.randrange(1, 100_001)))
                    elif op < 0.9:
                        cur.execute("DELETE FROM items WHERE id = %s", (rng.randrange(1, 100_001),))
                    else:
                        # A multi-row transaction, and a primary-key change.
                        c.begin()
                        k = rng.randrange(1, 100_001)
                        cur.execute("UPDATE items SET id = %s WHERE id = %s", (next_id, k))
                        next_id += 1
                        cur.execute("UPDATE items SET v = v * 2 WHERE id BETWEEN %s AND %s", (k, k + 5))
                        c.commit()
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(repr(e))

    stop = threading.Event()
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    try:
        yield errors
    finally:
        stop.set()
        for t in threads:
            t.join()


def load_items(mdb, db, n=100_000):
    mdb.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, v INT NOT NULL, note VARCHAR(40))", db=db)
    with mdb.connect(db) as c:
        cur = c.cursor()
        for lo in range(1, n + 1, 5000):
            cur.executemany("INSERT INTO items VALUES (%s, %s, %s)", [(i, i % 1000, None) for i in range(lo, min(lo + 5000, n + 1))])


