"""A PostgreSQL of the tests' own, as a change data capture source.

`SourcePostgres` is a `pg.PrivatePostgres` (initdb and pg_ctl from the
installed packages, run as the postgres user, in a temporary directory, on
a free port) set up for logical replication: `wal_level=logical`, room for
20 replication slots and WAL senders, and a database `shop`. The tests can
stop it, restart it, drop its slots and change its settings without
touching the machine's shared server. Where the binaries are missing the
tests skip loudly, and fail when CI=true.

Who is who on it, as Debezium's documentation sets a source up:
- `shop_owner` (no login) owns database `shop`, the tests' schemas and
  every table the tests create (their connections `SET ROLE shop_owner`);
- `hydrant`, hydrant's user, signs in over TCP with a password (SCRAM), has
  the REPLICATION attribute and is a member of `shop_owner`: so it may read
  the tables and add them to its publication, without being a superuser;
- `postgres`, the superuser, over the socket: for what only an
  administrator does (roles, settings, dropping a slot by hand).

Tests write to it with psycopg, and read what hydrant wrote from the lake:
`changes()` reads every change record of a stream, sorted by `order()`
(`source.lsn`, snapshot rows before the changes at the same LSN,
`source.row`); `replay()` applies them in that order to rebuild each table.
"""

import contextlib
import json
import os
import random
import threading
import time
from decimal import Decimal

import psycopg
import psycopg.errors
import pytest
from psycopg.rows import dict_row

import pg
from mariadb import SECRET_ARN, cdc_request, replay  # noqa: F401 - replay: re-exported for the PostgreSQL tests

USER, PASSWORD = "hydrant", "pg-cdc-secret-pw"
OWNER = "shop_owner"
DATABASE = "shop"
# wal_level=logical and room for many slots: each stream holds one slot and
# one WAL sender. The server's own zone is not UTC, so a timestamptz that
# hydrant does not turn into UTC shows.
SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "100",
    "timezone": "Asia/Kolkata",
}


def missing(why: str):
    message = f"CDC TEST NOT RUN: needs a private PostgreSQL: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


class SourcePostgres(pg.PrivatePostgres):
    """A private PostgreSQL set up for logical replication, with database
    `shop` and the users above. `settings` replace SETTINGS (e.g. a
    `wal_level` of `replica`, for the refusal)."""

    def __init__(self, settings: dict | None = None):
        super().__init__(missing, databases=(), settings=settings or SETTINGS, auth_host="scram-sha-256")
        self.run_sql(f"CREATE ROLE {OWNER} NOLOGIN")
        self.run_sql(f"CREATE ROLE {USER} LOGIN REPLICATION PASSWORD '{PASSWORD}' IN ROLE {OWNER}")
        self.run_sql(f"CREATE DATABASE {DATABASE} OWNER {OWNER}")
        self.run_sql(f"GRANT CONNECT, CREATE ON DATABASE {DATABASE} TO {USER}")

    def stop(self, mode: str = "fast", timeout: int | None = None):
        """Stops the server: a fast shutdown, or, if that has not finished in
        30 s, an immediate one (a crash, recovered at the next start). A fast
        shutdown waits for each logical WAL sender's client to confirm what
        it was sent; the outage test is about hydrant's retries, not that."""
        if mode != "fast":
            return super().stop(mode, timeout)
        try:
            super().stop("fast", 30 if timeout is None else timeout)
        except RuntimeError:
            super().stop("immediate", 60)

    # --- connections ---------------------------------------------------------

    def connect(self, db: str = DATABASE, admin: bool = False) -> psycopg.Connection:
        """An autocommit connection over the socket: as the tables' owner
        (`shop_owner`, what an application does), or with admin=True as the
        superuser."""
        c = psycopg.connect(
            host=self.root, port=self.port, user="postgres", dbname=db, autocommit=True, connect_timeout=5,
        )
        if not admin:
            c.execute(f"SET ROLE {OWNER}")
        return c

    def execute(self, sql: str, args=None, db: str = DATABASE, admin: bool = False) -> list[tuple]:
        """Runs one statement (or, without args, several separated by `;`);
        the rows of the last, if any."""
        with self.connect(db, admin) as c:
            cur = c.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, args=None, db: str = DATABASE, admin: bool = False):
        rows = self.execute(sql, args, db, admin)
        return rows[0][0] if rows else None

    def dicts(self, sql: str, args=None, db: str = DATABASE) -> list[dict]:
        with self.connect(db) as c:
            with c.cursor(row_factory=dict_row) as cur:
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

    def add_user(self, name: str, password: str, replication: bool):
        """Another login (member of shop_owner, so it may read and publish
        the tables), with or without the REPLICATION attribute."""
        attributes = f"LOGIN {'REPLICATION' if replication else 'NOREPLICATION'} PASSWORD '{password}'"
        if self.scalar("SELECT count(*) FROM pg_roles WHERE rolname = %s", (name,), admin=True):
            self.execute(f"ALTER ROLE {name} {attributes}", admin=True)
        else:
            self.execute(f"CREATE ROLE {name} {attributes} IN ROLE {OWNER}", admin=True)
        self.execute(f"GRANT CONNECT, CREATE ON DATABASE {DATABASE} TO {name}", admin=True)

    # --- what hydrant leaves on the server ----------------------------------

    def slots(self) -> dict[str, dict]:
        """The server's replication slots by name: plugin, database, active."""
        with self.connect(DATABASE, admin=True) as c:
            with c.cursor(row_factory=dict_row) as cur:
                cur.execute(
                    "SELECT slot_name, plugin, slot_type, database, active, active_pid, "
                    "confirmed_flush_lsn::text AS confirmed_flush_lsn FROM pg_replication_slots"
                )
                return {r["slot_name"]: r for r in cur.fetchall()}

    def publications(self, db: str = DATABASE) -> list[str]:
        return [r[0] for r in self.execute("SELECT pubname FROM pg_publication ORDER BY 1", db=db, admin=True)]

    def published_tables(self, publication: str, db: str = DATABASE) -> list[str]:
        return [
            r[0] for r in self.execute(
                "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1",
                (publication,), db=db, admin=True,
            )
        ]

    def drop_slot(self, name: str, timeout: float = 60.0):
        """Drops a replication slot by hand, once no WAL sender holds it
        (hydrant stopped: its sender goes when the connection does)."""
        deadline = time.time() + timeout
        while True:
            try:
                self.execute("SELECT pg_drop_replication_slot(%s)", (name,), admin=True)
                return
            except psycopg.errors.ObjectInUse:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def drop_leftovers(self, timeout: float = 30.0):
        """Drops every replication slot and publication (a test that failed
        before deleting its stream leaves them), so none holds WAL or a
        slot for the next test. Call with every hydrant stopped."""
        deadline = time.time() + timeout
        while any(s["active"] for s in self.slots().values()) and time.time() < deadline:
            time.sleep(0.2)
        for name, s in self.slots().items():
            if not s["active"]:
                with contextlib.suppress(psycopg.Error):
                    self.execute("SELECT pg_drop_replication_slot(%s)", (name,), admin=True)
        for db in [r[0] for r in self.execute("SELECT datname FROM pg_database WHERE datallowconn", admin=True)]:
            for p in self.publications(db):
                self.execute(f"DROP PUBLICATION IF EXISTS {ident(p)}", db=db, admin=True)


# --- the stream ---------------------------------------------------------------

def pg_cdc_request(name: str, port: int, tables, *, databases=(DATABASE,), bucket="lake", prefix="cdc/", interval=1,
                   columns=None, surrogate_keys=None, watermark="hydrant_meta.watermarks", partition_by_table=False,
                   **extra) -> dict:
    """A CreateDeliveryStream request for a DatabaseAsSource stream from a
    PostgreSQL database into the lake. Patterns are PostgreSQL's:
    `schema.table`, `schema.table.column`."""
    r = cdc_request(
        name, port, databases, tables, bucket=bucket, prefix=prefix, interval=interval, columns=columns,
        surrogate_keys=surrogate_keys, watermark=watermark, partition_by_table=partition_by_table, **extra,
    )
    r["DatabaseSourceConfiguration"]["Type"] = "PostgreSQL"
    return r


# --- what hydrant wrote -------------------------------------------------------

def order(c: dict):
    """Source order: the LSN, snapshot rows before changes at the same LSN, the row."""
    s = c["source"]
    return (s["lsn"], 0 if c["op"] == "r" else 1, s["row"])


def changes(server, bucket="lake", prefix="cdc/", exact=False) -> list[dict]:
    """Every change record in the lake under `prefix`, in source order.
    With exact=True numbers that are not integers are read as Decimal, so
    `3.14` and `3.140000104904175` differ, and objects keep their key
    order: two records compare equal only if hydrant wrote them alike."""
    out = []
    root = server.lake / bucket / prefix
    if not root.exists():
        return out
    loads = (lambda b: json.loads(b, parse_float=Decimal)) if exact else json.loads
    for p in sorted(root.rglob("*")):
        if p.is_file():
            for line in p.read_bytes().splitlines():
                if line.strip():
                    out.append(loads(line))
    out.sort(key=order)
    return out


# --- fixtures -----------------------------------------------------------------

@pytest.fixture(scope="module")
def pgsrc():
    """A private PostgreSQL source for the test module."""
    s = SourcePostgres()
    yield s
    s.close()


@pytest.fixture
def schema(pgsrc, request):
    """A schema of the test's own in `shop`, owned by shop_owner. Request it
    before make_server: at the end, with hydrant stopped, the schema and
    any replication slot or publication left behind are dropped."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[5:55].lower()
    if not pgsrc.running():
        pgsrc.start()
    pgsrc.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE", admin=True)
    pgsrc.execute(f"CREATE SCHEMA {name} AUTHORIZATION {OWNER}", admin=True)
    yield name
    if not pgsrc.running():
        pgsrc.start()
    pgsrc.drop_leftovers()
    pgsrc.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE", admin=True)


# --- tables and writers -------------------------------------------------------

ITEMS_DDL = "CREATE TABLE {schema}.items (id bigint PRIMARY KEY, v integer NOT NULL, note varchar(40))"


def create_items(pgsrc, schema):
    """`items`, keyed, with REPLICA IDENTITY FULL as change capture needs."""
    pgsrc.execute(ITEMS_DDL.format(schema=schema))
    pgsrc.execute(f"ALTER TABLE {schema}.items REPLICA IDENTITY FULL")


def load_items(pgsrc, schema, n=100_000):
    """`items` with rows 1..n: (id, id % 1000, NULL)."""
    create_items(pgsrc, schema)
    if n:
        pgsrc.execute(
            f"INSERT INTO {schema}.items SELECT g, g %% 1000, NULL FROM generate_series(1, %s) g", (n,)
        )
        pgsrc.execute(f"ANALYZE {schema}.items")


class Writers:
    """What the writers did: `errors` they met, `changed` rows changed by
    the statements that committed (what the change log must hold, one
    record each), `rolled_back` transactions PostgreSQL aborted (a deadlock
    between two writers: nothing of them committed)."""

    def __init__(self):
        self.errors: list[str] = []
        self.counts: list[int] = []
        self.rollbacks: list[int] = []

    @property
    def changed(self) -> int:
        return sum(self.counts)

    @property
    def rolled_back(self) -> int:
        return sum(self.rollbacks)


@contextlib.contextmanager
def running_writers(pgsrc, schema, count=4, start_id=10_000_000, keys=100_000):
    """`count` writers inserting, updating (primary-key changes too) and
    deleting `items` while the block runs, each on its own connection (ids
    they insert are their own; updates and deletes hit ids 1..keys, which
    may or may not still be there). Yields a Writers, complete once the
    block is left."""
    w = Writers()
    w.counts = [0] * count
    w.rollbacks = [0] * count
    table = f"{schema}.items"

    def work(n):
        rng = random.Random(n)
        next_id = start_id + n * 1_000_000
        try:
            with pgsrc.connect() as c:
                while not stop.is_set():
                    op = rng.random()
                    try:
                        if op < 0.4:
                            cur = c.execute(f"INSERT INTO {table} (id, v, note) VALUES (%s, %s, %s)",
                                            (next_id, rng.randrange(1000), f"w{n}"))
                            next_id += 1
                            w.counts[n] += cur.rowcount
                        elif op < 0.8:
                            cur = c.execute(f"UPDATE {table} SET v = v + 1, note = %s WHERE id = %s",
                                            (f"u{n}", rng.randrange(1, keys + 1)))
                            w.counts[n] += cur.rowcount
                        elif op < 0.9:
                            cur = c.execute(f"DELETE FROM {table} WHERE id = %s", (rng.randrange(1, keys + 1),))
                            w.counts[n] += cur.rowcount
                        else:
                            # A multi-row transaction, and a primary-key change.
                            k = rng.randrange(1, keys + 1)
                            changed = 0
                            with c.transaction():
                                changed += c.execute(f"UPDATE {table} SET id = %s WHERE id = %s", (next_id, k)).rowcount
                                changed += c.execute(f"UPDATE {table} SET v = v * 2 WHERE id BETWEEN %s AND %s",
                                                     (k, k + 5)).rowcount
                            next_id += 1
                            w.counts[n] += changed
                    except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                        w.rollbacks[n] += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            w.errors.append(repr(e))

    stop = threading.Event()
    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(count)]
    for t in threads:
        t.start()
    try:
        yield w
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        if any(t.is_alive() for t in threads):
            w.errors.append("a writer did not stop within 120 s")
