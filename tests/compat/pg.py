"""The PostgreSQL the warehouse tests load into (127.0.0.1:5432, user
postgres, database test, trust auth), read and written with psql, the
client its users use; and the RedshiftDestinationConfiguration those tests
create streams with.

`PrivatePostgres` is a PostgreSQL of a test's own (initdb and pg_ctl from
the installed server packages, in a temporary directory, on a free port),
for tests that stop, restart or reconfigure their server: the warehouse
outage tests, and change data capture from PostgreSQL (pgsource.py).

`require_pg()` skips a test loudly when that server cannot be reached, and
fails it when CI=true. The `warehouse` fixture gives a test its own schema
(dropped at the end) and unique stream names, whose rows in hydrant's
ledger (`hydrant.loads`) it deletes at the end: nothing else on the shared
server is touched.
"""

import glob
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from decimal import Decimal

import pytest

from conftest import free_port

HOST, PORT, USER, DATABASE = "127.0.0.1", 5432, "postgres", "test"
JDBC_URL = f"jdbc:postgresql://{HOST}:{PORT}/{DATABASE}"
ROLE = "arn:aws:iam::123456789012:role/firehose"
ERROR_PREFIX = "errors/!{firehose:error-output-type}/"


def redshift_config(
    table,
    *,
    url=JDBC_URL,
    options="JSON 'auto'",
    columns=None,
    bucket="staging",
    prefix="orders/",
    error_prefix=ERROR_PREFIX,
    compression="UNCOMPRESSED",
    size_mb=1,
    interval=1,
    username=USER,
    password="any-password",
    delimiter=True,
    **extra,
) -> dict:
    """A RedshiftDestinationConfiguration for the common case: short buffering,
    staged UNCOMPRESSED in `bucket`, one record a line (AppendDelimiterToRecord)."""
    copy = {"DataTableName": table, "CopyOptions": options}
    if columns is not None:
        copy["DataTableColumns"] = columns
    staging = {
        "RoleARN": ROLE,
        "BucketARN": f"arn:aws:s3:::{bucket}",
        "Prefix": prefix,
        "BufferingHints": {"SizeInMBs": size_mb, "IntervalInSeconds": interval},
        "CompressionFormat": compression,
    }
    if error_prefix is not None:
        staging["ErrorOutputPrefix"] = error_prefix
    cfg = {"RoleARN": ROLE, "ClusterJDBCURL": url, "CopyCommand": copy, "S3Configuration": staging}
    if username is not None:
        cfg["Username"] = username
    if password is not None:
        cfg["Password"] = password
    if delimiter:
        cfg["ProcessingConfiguration"] = {"Enabled": True, "Processors": [{"Type": "AppendDelimiterToRecord"}]}
    cfg.update(extra)
    return cfg


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    # Read times in UTC whatever the server's default.
    env.update(PGCONNECT_TIMEOUT="5", PGTZ="UTC", PGAPPNAME="hydrant-compat-tests")
    return env


def _run(sql: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", "-h", HOST, "-p", str(PORT), "-U", USER, "-d", DATABASE, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


_probe: list = []


def _unreachable() -> str | None:
    """Why PostgreSQL cannot be used, or None. Probed once per session."""
    if not _probe:
        if not shutil.which("psql"):
            _probe.append("psql is not on PATH")
        else:
            try:
                r = _run("SELECT 1", timeout=15)
                why = None if r.returncode == 0 and r.stdout.strip() == "1" else f"psql exited {r.returncode}: {r.stderr.strip()}"
            except subprocess.TimeoutExpired:
                why = "psql did not answer within 15 s"
            _probe.append(why)
    return _probe[0]


def require_pg():
    why = _unreachable()
    if why:
        message = f"WAREHOUSE TEST NOT RUN: needs PostgreSQL at {HOST}:{PORT} (user {USER}, database {DATABASE}): {why}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def psql(sql: str) -> str:
    """Runs SQL with psql (unaligned, tuples only); its stdout. A failure fails the test."""
    r = _run(sql)
    assert r.returncode == 0, f"psql failed (exit {r.returncode}) on {sql!r}:\n{r.stderr}"
    return r.stdout


def scalar(sql: str) -> str:
    return psql(sql).strip()


def rows(sql: str) -> list[dict]:
    """The rows of a SELECT as dicts, typed by PostgreSQL's own JSON
    (numbers as int or Decimal, booleans, None for NULL)."""
    text = psql(f"SELECT coalesce(json_agg(q), '[]'::json) FROM ({sql}) q").strip()
    return json.loads(text, parse_float=Decimal)


def count(table: str) -> int:
    return int(scalar(f"SELECT count(*) FROM {table}"))


def literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def ledger(stream: str) -> dict:
    """What hydrant.loads says of a stream: objects, rows, rejected, object names."""
    if scalar("SELECT to_regclass('hydrant.loads') IS NOT NULL") != "t":
        return {"objects": 0, "rows": 0, "rejected": 0, "keys": []}
    got = rows(f"SELECT object, rows, rejected FROM hydrant.loads WHERE stream = {literal(stream)}")
    return {
        "objects": len(got),
        "rows": sum(r["rows"] for r in got),
        "rejected": sum(r["rejected"] for r in got),
        "keys": [r["object"] for r in got],
    }


class Warehouse:
    """One test's corner of the shared server."""

    def __init__(self):
        self.suffix = secrets.token_hex(4)
        self.schema = f"hydrant_test_{self.suffix}"
        self.streams: list[str] = []
        self.public_tables: list[str] = []
        psql(f"CREATE SCHEMA {self.schema}")

    def table(self, name: str, columns: str) -> str:
        """Creates `schema.name (columns)`; returns its qualified name."""
        qualified = f"{self.schema}.{name}"
        psql(f"CREATE TABLE {qualified} ({columns})")
        return qualified

    def public_table(self, name: str, columns: str) -> str:
        """Creates a uniquely named table in public (dropped at the end); returns its bare name."""
        bare = f"{name}_{self.suffix}"
        self.public_tables.append(bare)
        psql(f"CREATE TABLE public.{bare} ({columns})")
        return bare

    def stream(self, name: str) -> str:
        """A stream name unique to this test, whose ledger rows are removed at the end."""
        unique = f"{name}-{self.suffix}"
        self.streams.append(unique)
        return unique

    def cleanup(self):
        statements = [f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"]
        statements += [f"DROP TABLE IF EXISTS public.{t}" for t in self.public_tables]
        if self.streams:
            names = ", ".join(literal(s) for s in self.streams)
            statements.append(
                f"DO $$ BEGIN IF to_regclass('hydrant.loads') IS NOT NULL THEN "
                f"DELETE FROM hydrant.loads WHERE stream IN ({names}); END IF; END $$"
            )
        for s in statements:
            _run(s)


@pytest.fixture
def warehouse():
    """A schema of one's own on the shared PostgreSQL. Request it before
    make_server, so the servers are stopped before it is cleaned up."""
    require_pg()
    w = Warehouse()
    yield w
    w.cleanup()


# --- a PostgreSQL of the test's own -------------------------------------------

def server_binaries() -> str | None:
    """The directory of the newest installed PostgreSQL server (initdb,
    pg_ctl), or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    version = lambda p: [int(n) for n in re.findall(r"\d+", p.split("/")[4])] or [0]  # noqa: E731
    initdb = max(found, key=version) if found else shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class PrivatePostgres:
    """A PostgreSQL of the test's own, from the installed binaries: initdb
    and pg_ctl run as the postgres user (initdb refuses root), in a
    temporary directory (its socket there too), listening on 127.0.0.1 on a
    free port. stop() and start() restart it on the same data; close()
    stops it and removes the directory.

    `missing(why)` is called when the binaries are not installed (it skips
    loudly, or fails when CI=true). `settings` are passed to the server as
    `-c name=value`, after the defaults, so they win over postgresql.conf
    and ALTER SYSTEM; change them with start(settings=...). `auth_host` is
    how TCP connections sign in (`trust`, or `scram-sha-256` for
    passwords); the socket always trusts, so the test itself connects there
    as postgres. The `databases` are created at the start."""

    def __init__(self, missing, databases=("test",), settings: dict | None = None, auth_host: str = "trust"):
        self.bin = server_binaries()
        self.psql = shutil.which("psql")
        if self.bin is None or self.psql is None:
            missing("initdb (PostgreSQL's server binaries) or psql is not installed")
        self.root = tempfile.mkdtemp(prefix="hydrant-pg-", dir="/tmp")
        os.chmod(self.root, 0o777)
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "log")
        self.port = free_port()
        self.settings = dict(settings or {})
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        auth = ["--auth=trust"] if auth_host == "trust" else ["--auth-local=trust", f"--auth-host={auth_host}"]
        self._run("initdb", "-D", self.data, "-U", "postgres", *auth, "-E", "UTF8")
        self.start()
        for db in databases:
            self.run_sql(f"CREATE DATABASE {db}", db="postgres")

    def _run(self, tool, *args):
        r = subprocess.run(self.as_user + [os.path.join(self.bin, tool), *args], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{tool} failed: {r.stdout}\n{r.stderr}\n{self.server_log()[-2000:]}")

    def start(self, settings: dict | None = None):
        """Starts the server (again); `settings`, if given, replace those it had."""
        if settings is not None:
            self.settings = dict(settings)
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        opts += "".join(f" -c {k}={v}" for k, v in self.settings.items())
        self._run("pg_ctl", "-D", self.data, "-o", opts, "-l", self.log, "-w", "start")

    def stop(self, mode: str = "fast", timeout: int | None = None):
        """pg_ctl stop in `mode` (fast, immediate), waiting up to `timeout`
        seconds (pg_ctl's default, 60, if None)."""
        wait = ["-t", str(timeout)] if timeout is not None else []
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", *wait, "stop")

    def running(self) -> bool:
        r = subprocess.run(self.as_user + [os.path.join(self.bin, "pg_ctl"), "-D", self.data, "status"],
                           capture_output=True, text=True, timeout=60)
        return r.returncode == 0

    def close(self):
        try:
            self.stop()
        except Exception:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def server_log(self) -> str:
        try:
            return open(self.log, errors="replace").read()
        except OSError:
            return ""

    def run_sql(self, sql: str, db: str = "postgres") -> str:
        """Runs SQL with psql over the socket, as postgres; its stdout (unaligned, tuples only)."""
        r = subprocess.run(
            [self.psql, "-h", self.root, "-p", str(self.port), "-U", "postgres", "-d", db, "-X", "-q", "-At",
             "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, timeout=120, env=_env(),
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {r.stderr}")
        return r.stdout
