"""Change data capture across a failover: the source's primary stops and its
replica takes over behind the same address, as a virtual IP or a proxy does
in production. The replica's binlog has other file names and offsets, so
only the GTID position hydrant records says where to go on; the replay of
the lake must equal the new primary's table, with no change lost or twice.

Two private MariaDBs (see mariadb.py), replicating by GTID."""

import json
import socket
import threading

import pytest

from conftest import wait_for
from mariadb import PASSWORD, USER, PrivateMariaDB, cdc_request, changes, replay


class Front:
    """A TCP front for a database server: `point(port)` sends new
    connections to another server and cuts the ones that are open."""

    def __init__(self, port: int):
        self.target = port
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def point(self, port: int):
        self.target = port
        with self.lock:
            cut, self.open = self.open, []
        for s in cut:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.listener.close()
        self.point(self.target)


@pytest.fixture
def pair():
    primary = PrivateMariaDB()
    replica = PrivateMariaDB(["--server-id=2", "--log-slave-updates", "--log-bin=replica-bin"])
    try:
        # The replica starts from the primary as it is now, with a binlog
        # of replicated events only.
        replica.execute("RESET MASTER")
        (gtid,), = primary.execute("SELECT @@gtid_binlog_pos")
        replica.execute("SET GLOBAL gtid_slave_pos = %s", (gtid,))
        replica.execute(
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, "
            f"MASTER_USER='{USER}', MASTER_PASSWORD='{PASSWORD}', MASTER_USE_GTID=slave_pos"
        )
        replica.execute("START SLAVE")
        yield primary, replica
    finally:
        replica.close()
        primary.close()


def snapshot_complete(client, name):
    d = client.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
    infos = d["Source"]["DatabaseSourceDescription"]["SnapshotInfo"]
    return infos and all(i["Status"] == "COMPLETE" for i in infos)


def caught_up(primary, replica):
    (gtid,), = primary.execute("SELECT @@gtid_binlog_pos")
    (r,), = replica.execute("SELECT MASTER_GTID_WAIT(%s, 120)", (gtid,))
    assert r == 0, f"the replica did not reach the primary's {gtid} within 120 s"


def write(server, first: int, n: int):
    """n inserts from id `first`, an update of every third and a delete of
    every seventh, in single and multi-row transactions."""
    with server.connect("shop") as c:
        cur = c.cursor()
        for i in range(first, first + n):
            cur.execute("INSERT INTO items VALUES (%s, %s)", (i, i))
        c.begin()
        cur.execute("UPDATE items SET v = -v WHERE id >= %s AND id %% 3 = 0", (first,))
        cur.execute("DELETE FROM items WHERE id >= %s AND id %% 7 = 0", (first,))
        c.commit()


def test_a_failover_to_the_replica_resumes_at_the_gtid_position(pair, make_server):
    primary, replica = pair
    front = Front(primary.port)
    try:
        primary.execute("CREATE DATABASE shop")
        primary.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, v INT NOT NULL)", db="shop")
        server = make_server(primary.config())
        client = server.client()
        client.create_delivery_stream(**cdc_request("shop", front.port, ["shop"], ["shop.items"]))
        # The table is empty: every row comes from the binlog, with its GTID.
        wait_for(lambda: snapshot_complete(client, "shop"), timeout=60, what="the snapshot")
        write(primary, 1, 200)
        first = 200 + len(range(3, 201, 3)) + len(range(7, 201, 7))
        wait_for(lambda: len(changes(server)) >= first, timeout=120, what="the first changes")

        # hydrant stops; the primary writes on; the replica takes over.
        server.kill()
        write(primary, 1000, 200)
        caught_up(primary, replica)
        primary.stop()
        front.point(replica.port)
        replica.execute("STOP SLAVE")
        replica.execute("RESET SLAVE ALL")
        write(replica, 2000, 200)
        server.start()

        with replica.connect("shop") as c:
            cur = c.cursor()
            cur.execute("SELECT id, v FROM items ORDER BY id")
            target = {json.dumps({"id": i}): {"id": i, "v": v} for i, v in cur.fetchall()}

        def replayed():
            got = changes(server)
            without = [c["source"] for c in got if not c["source"].get("gtid")]
            assert not without, f"{len(without)} binlog changes without a GTID, e.g. {without[:2]}"
            # A transaction's changes are on one server: its offsets order them.
            got.sort(key=lambda c: (int(c["source"]["gtid"].split("-")[2]), c["source"]["pos"], c["source"]["row"]))
            return got if replay(got).get(("shop", "items")) == target else None

        try:
            got = wait_for(replayed, timeout=180, interval=0.5, what="the replay to equal the new primary's table")
        except AssertionError as e:
            if "timed out" not in str(e):
                raise
            d = client.describe_delivery_stream(DeliveryStreamName="shop")["DeliveryStreamDescription"]
            have = replay(changes(server)).get(("shop", "items"), {})
            raise AssertionError(
                f"the replay has {len(have)} rows, the new primary {len(target)}; "
                f"missing {sorted(set(target) - set(have))[:5]}; "
                f"different {[(k, have[k], target[k]) for k in target if k in have and have[k] != target[k]][:5]}; "
                f"{d.get('FailureDescription')}"
            ) from None
        keys = [(c["source"]["gtid"], c["source"]["pos"], c["source"]["row"]) for c in got]
        assert len(keys) == len(set(keys)), f"{len(keys) - len(set(keys))} change records appear twice"
        inserted = sorted(c["key"]["id"] for c in got if c["op"] == "c")
        assert inserted == [*range(1, 201), *range(1000, 1200), *range(2000, 2200)]
        # Read from the replica's own binlog, under its own names.
        names = [r[0] for r in replica.execute("SHOW BINARY LOGS")]
        late = [c["source"] for c in got if c["key"]["id"] >= 1000]
        assert late and all(s["file"] in names for s in late), (names, {s["file"] for s in late})
        servers = {s["gtid"].split("-")[1] for s in late}
        assert servers == {"1", "2"}, servers
    finally:
        front.close()
