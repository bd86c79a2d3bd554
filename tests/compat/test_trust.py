"""Attacks on hydrant's trust boundaries, each checked the way a user would
see it: the attack is refused with a clear answer (an AWS error, an HTTP
status, a config error naming the file and key), the process is still
running afterwards (`proc.poll() is None`), GET /-/healthy answers, and
normal work (a put, a delivery, a modest query) still goes through.

A. Nothing escapes the lake: unsafe Prefix / ErrorOutputPrefix are refused.
B. Type parsers are bounded: deeply nested Hive types and JSON records.
C. SQL cannot crash or exhaust hydrant: deep expressions, huge texts, limits.
D. The HTTP server has limits: slowloris, idle keep-alive, stalled bodies,
   the body budget, the connection cap, and half-closed requests.
E. Listening beyond loopback needs --allow-unauthenticated-network.
F. Log corruption in the middle of a segment loses one record, not the rest.
G. A broken delivery state is reported, never a crash loop.
H. Config errors name the file and the key.
I. A full disk on CreateDeliveryStream is ServiceUnavailableException.

Every wait here waits for an event (an exit, an answer, a close) under a
generous deadline, so a slow machine makes the tests slower, not flaky; a
process that crashes is noticed at once rather than waited out.
"""

import base64
import errno
import http.client
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter

import botocore.exceptions
import pytest

from conftest import free_port, hydrant_bin, mount_tmpfs, stream_config, unmount_tmpfs, wait_for

MIB = 1 << 20

# Generous bounds for events that should happen within a second or two.
EXIT_DEADLINE = 60.0
CLOSE_DEADLINE = 30.0
QUERY_TIMEOUT = 120.0


# ---------------------------------------------------------------------------
# Helpers


def config_text(*streams, **top):
    """A config file (YAML is a superset of JSON)."""
    doc = dict(top)
    if streams:
        doc["delivery_streams"] = list(streams)
    return json.dumps(doc)


def log_tail(server, n=3000):
    return server.log()[-n:]


def died(server, what):
    """Fails the test with how the process ended (or that it is still running)."""
    rc = None
    if server.proc is not None:
        try:
            rc = server.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
    state = "still running" if rc is None else f"exited with {rc}" + (" (killed by a signal)" if rc < 0 else "")
    pytest.fail(f"{what}; hydrant {state}\n{log_tail(server)}")


def get(server, path, timeout=30.0):
    """(status, body) of a GET; notices a dead process instead of hanging."""
    try:
        with urllib.request.urlopen(server.endpoint + path, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException, socket.timeout, TimeoutError) as e:
        died(server, f"GET {path} failed: {e!r}")


def assert_alive(server, healthy=200):
    """The process is running and GET /-/healthy answers `healthy`."""
    if server.proc.poll() is not None:
        died(server, "hydrant is not running after the attack")
    status, body = get(server, "/-/healthy")
    assert status == healthy, f"GET /-/healthy answered {status}: {body[:500]!r}"
    assert server.proc.poll() is None, f"hydrant exited:\n{log_tail(server)}"
    return body


def streams_info(server, name):
    status, body = get(server, "/-/streams")
    assert status == 200, body
    for s in json.loads(body)["streams"]:
        if s["name"] == name:
            return s
    raise AssertionError(f"stream {name} not in /-/streams: {body[:500]!r}")


def put_ok(server, stream, data=b'{"probe": true}'):
    """A normal put_record succeeds."""
    c = server.client(read_timeout=30, connect_timeout=10)
    try:
        r = c.put_record(DeliveryStreamName=stream, Record={"Data": data})
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        if server.proc.poll() is not None:
            died(server, f"put_record failed: {e!r}")
        raise AssertionError(f"a normal put_record failed: {e!r}")
    assert r["RecordId"]


def spawn(server, listen=None, extra=(), stdout=None, stderr=None):
    """Starts `hydrant serve` for `server` without waiting for anything."""
    args = [hydrant_bin(), "serve", "--listen", listen or f"127.0.0.1:{server.port}", "--data-dir", str(server.data_dir)]
    if server.config_path:
        args += ["--config", str(server.config_path)]
    args += list(extra)
    log = open(server.log_path, "ab")
    server.proc = subprocess.Popen(
        args, stdout=stdout or log, stderr=stderr or log, env={**os.environ, "RUST_LOG": "info"}
    )
    log.close()
    return server.proc


def until_answers(server, path="/-/healthy", deadline=EXIT_DEADLINE):
    """Waits until `path` answers with any HTTP status, or the process exits.
    Returns the status, or None if the process exited first."""
    end = time.time() + deadline
    while time.time() < end:
        if server.proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(server.endpoint + path, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"hydrant neither exited nor answered {path} within {deadline}s:\n{log_tail(server)}")


def serve_expecting_exit(make_server, config=None, listen=None, extra=()):
    """Runs `hydrant serve` (stdout and stderr apart) until it exits or is
    ready. Returns (rc or None if it started, stdout, stderr, server)."""
    server = make_server(config=config, start=False)
    out_path = server.log_path.with_suffix(".out")
    err_path = server.log_path.with_suffix(".err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        spawn(server, listen=listen, extra=extra, stdout=out, stderr=err)
    if listen and listen.startswith("0.0.0.0:"):
        server.port = int(listen.rsplit(":", 1)[1])
        server.endpoint = f"http://127.0.0.1:{server.port}"
    status = until_answers(server, "/-/ready")
    rc = None
    if status is None:
        rc = server.proc.returncode
    text = lambda p: p.read_text(errors="replace") if p.exists() else ""
    return rc, text(out_path), text(err_path), server


def assert_refused_at_start(rc, out, err, *, must_name=(), server=None):
    """`hydrant serve` exited promptly with an error (not a signal, not a panic)
    whose output names each of `must_name`."""
    both = out + err
    if rc is None:
        server.kill()
        pytest.fail(f"hydrant started (answered /-/ready) instead of refusing the config:\n{both[-3000:]}")
    assert rc > 0, f"hydrant was killed by signal {-rc} instead of exiting with an error:\n{both[-3000:]}"
    for word in ("panicked", "overflow"):
        assert word not in both, f"{word!r} in hydrant's output:\n{both[-3000:]}"
    for name in must_name:
        assert name in err, f"{name!r} not named on stderr:\n{err[-3000:]}"


def client_error(e):
    return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"].get("Message", "")


# Raw HTTP over a socket ------------------------------------------------------


class RawResponse:
    """Reads one HTTP response from a socket, bit by bit, without blocking."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.closed = False
        self.reset = False

    def pump(self):
        """Reads what is there. True once the response is whole or the peer closed."""
        if self.done():
            return True
        # A socket with a timeout waits for data even with MSG_DONTWAIT; this
        # must not wait at all.
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            self._read()
        finally:
            self.sock.settimeout(timeout)
        return self.done()

    def _read(self):
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.closed = True
                    break
                self.buf += chunk
        except (BlockingIOError, InterruptedError):
            pass
        except (ConnectionResetError, BrokenPipeError):
            self.closed = self.reset = True
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                pass
            else:
                self.closed = self.reset = True
        return self.done()

    def head(self):
        if b"\r\n\r\n" not in self.buf:
            return None
        head, _, body = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers, body

    def complete(self):
        h = self.head()
        if h is None:
            return False
        _, headers, body = h
        if "content-length" in headers:
            return len(body) >= int(headers["content-length"])
        if "chunked" in headers.get("transfer-encoding", ""):
            return body.endswith(b"0\r\n\r\n")
        return self.closed

    def done(self):
        return self.closed or self.complete()

    @property
    def status(self):
        h = self.head()
        return h[0] if h else None

    @property
    def headers(self):
        h = self.head()
        return h[1] if h else {}

    @property
    def body(self):
        h = self.head()
        return h[2] if h else b""


def wait_response(sock, deadline):
    """Waits (on the socket) until a whole response arrived or the peer closed."""
    r = RawResponse(sock)
    end = time.time() + deadline
    while not r.pump():
        left = end - time.time()
        if left <= 0:
            raise AssertionError(f"no response and no close within {deadline}s (got {r.buf[:200]!r})")
        select.select([sock], [], [], min(left, 1.0))
    return r


def raw_connect(server, timeout=30.0):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def aws_head(target, length, extra=""):
    return (
        "POST / HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        f"X-Amz-Target: Firehose_20150804.{target}\r\n"
        "Content-Type: application/x-amz-json-1.1\r\n"
        f"Content-Length: {length}\r\n"
        f"{extra}"
        "\r\n"
    ).encode()


def nested_type(depth, leaf="int"):
    return "array<" * depth + leaf + ">" * depth


# ---------------------------------------------------------------------------
# A. Nothing escapes the lake

ERROR_OK = "err/!{firehose:error-output-type}/"


def unsafe_prefixes(outside):
    """(what, Prefix, ErrorOutputPrefix, which field must be named). `outside`
    is an absolute directory of the test's own, never the real /tmp or /."""
    return [
        ("'..' from an expression", "!{timestamp:'..'}/x/", ERROR_OK, "Prefix"),
        ("empty segment from an expression", "a/!{timestamp:'/'}b/", ERROR_OK, "Prefix"),
        ("absolute path from an expression", f"!{{timestamp:'{outside}/x/'}}", ERROR_OK, "Prefix"),
        ("'..' segments after an expression", "!{timestamp:yyyy}/../../escape/", ERROR_OK, "Prefix"),
        ("absolute prefix", f"{outside}/abs/", ERROR_OK, "Prefix"),
        ("'.' segment", "a/./b/", ERROR_OK, "Prefix"),
        ("NUL", "a\x00b/", ERROR_OK, "Prefix"),
        ("control character", "a\x01b/", ERROR_OK, "Prefix"),
        ("the issue's prefix", "!{timestamp:yyyy}/!{timestamp:'..'}/!{timestamp:'..'}/escape/", ERROR_OK, "Prefix"),
        ("'..' in ErrorOutputPrefix", "ok/", "!{timestamp:'..'}/!{firehose:error-output-type}/", "ErrorOutputPrefix"),
        ("absolute ErrorOutputPrefix", "ok/", f"{outside}/abs/!{{firehose:error-output-type}}/", "ErrorOutputPrefix"),
        ("empty segment in ErrorOutputPrefix", "ok/", "err/!{timestamp:'/'}!{firehose:error-output-type}/", "ErrorOutputPrefix"),
    ]


def test_unsafe_prefixes_are_refused_and_nothing_escapes_the_lake(make_server, tmp_path):
    """Every CreateDeliveryStream whose Prefix or ErrorOutputPrefix can
    evaluate to an unsafe key ('..', '.', empty segment, absolute, NUL or a
    control character) is refused with InvalidArgumentException whose message
    starts with the field's name; no stream is created, nothing appears
    outside the data dir or in another bucket, and a valid stream still
    delivers end to end."""
    outside = tmp_path / "outside"
    server = make_server()
    before = sorted(os.listdir(tmp_path))
    c = server.client()
    wrong = []
    for i, (what, prefix, error_prefix, field) in enumerate(unsafe_prefixes(outside)):
        req = stream_config(name=f"bad-{i}", bucket="attack-bucket", prefix=prefix, ErrorOutputPrefix=error_prefix)
        try:
            c.create_delivery_stream(**req)
            wrong.append(f"{what} ({prefix!r} / {error_prefix!r}): the stream was created")
        except botocore.exceptions.ClientError as e:
            code, status, message = client_error(e)
            # The field leads the message, bare or qualified by its destination
            # ("ExtendedS3DestinationConfiguration.Prefix: ...", like hydrant's
            # other validation messages).
            if (code, status) != ("InvalidArgumentException", 400) or not re.match(
                    rf"((Extended)?S3DestinationConfiguration\.)?{field}:", message):
                wrong.append(f"{what}: got {code} {status} {message[:200]!r}; want InvalidArgumentException "
                             f"with a message starting {field + ':'!r}")
        except botocore.exceptions.BotoCoreError as e:
            died(server, f"{what}: {e!r}")
        assert server.proc.poll() is None, f"hydrant died on {what}:\n{log_tail(server)}"
    assert not wrong, "unsafe prefixes not refused as they should be:\n  " + "\n  ".join(wrong)
    assert c.list_delivery_streams()["DeliveryStreamNames"] == []
    assert_alive(server)

    c.create_delivery_stream(**stream_config(name="good", bucket="good-bucket", prefix="ok/"))
    put_ok(server, "good", b'{"good": 1}')
    wait_for(lambda: server.objects("good-bucket"), timeout=30, what="the valid stream's object in the lake")
    assert all(k.startswith("ok/") for k in server.keys("good-bucket")), server.keys("good-bucket")

    # Nothing outside the data dir, nothing in the lake but the good bucket.
    assert not outside.exists(), f"{outside} was created"
    assert sorted(os.listdir(tmp_path)) == before, "files appeared next to the data dir"
    assert sorted(os.listdir(server.lake)) == ["good-bucket"], os.listdir(server.lake)
    assert not (server.data_dir / "escape").exists()
    assert c.list_delivery_streams()["DeliveryStreamNames"] == ["good"]
    assert_alive(server)


def test_unsafe_prefix_in_config_file_is_refused_at_start(make_server):
    """The issue's Prefix in the config file: `hydrant serve` exits non-zero
    at once, stderr naming the config file and Prefix, with no panic."""
    bad = stream_config(name="escape", bucket="escape-bucket",
                        prefix="!{timestamp:yyyy}/!{timestamp:'..'}/!{timestamp:'..'}/escape/", ErrorOutputPrefix=ERROR_OK)
    rc, out, err, server = serve_expecting_exit(make_server, config=config_text(bad))
    assert_refused_at_start(rc, out, err, must_name=(str(server.config_path), "Prefix"), server=server)
    assert not (server.data_dir / "lake" / "escape").exists()


# ---------------------------------------------------------------------------
# B. Bounded type parsers


def glue(columns, table="analytics.deep"):
    return {table: {"columns": columns}}


def parquet_stream(name, bucket, database, table, interval=1):
    return stream_config(
        name=name, bucket=bucket, prefix="events/", interval=interval, size_mb=64, delimiter=False,
        ErrorOutputPrefix="errors/!{firehose:error-output-type}/",
        DataFormatConversionConfiguration={
            "Enabled": True,
            "SchemaConfiguration": {"DatabaseName": database, "TableName": table,
                                    "RoleARN": "arn:aws:iam::123456789012:role/glue"},
            "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
            "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {"Compression": "SNAPPY"}}},
        },
    )


@pytest.mark.parametrize("case", ["array-200", "struct-200", "array-5000", "array-5000-used-by-a-stream"])
def test_deeply_nested_glue_type_is_refused_at_start(make_server, case):
    """A glue_tables column type nested 200 or 5000 levels: `hydrant serve`
    exits with an error (not a crash) naming the table and the column and
    saying the type is nested deeper than 32 levels."""
    kind = {
        "array-200": nested_type(200),
        "struct-200": "struct<f:" * 200 + "int" + ">" * 200,
        "array-5000": nested_type(5000),
        "array-5000-used-by-a-stream": nested_type(5000),
    }[case]
    streams = [parquet_stream("deep", "deep-bucket", "analytics", "deep")] if case.endswith("stream") else []
    config = config_text(*streams, glue_tables=glue([{"Name": "id", "Type": "int"}, {"Name": "deep_col", "Type": kind}]))
    rc, out, err, server = serve_expecting_exit(make_server, config=config)
    assert_refused_at_start(rc, out, err, must_name=("analytics.deep", "deep_col"), server=server)
    assert re.search(r"nested deeper than 32\b", err), f"stderr does not say nested deeper than 32 levels:\n{err[-2000:]}"


def test_decimal_precision_out_of_range_is_refused_at_start(make_server):
    """decimal(99,99) in glue_tables: `hydrant serve` exits with an error
    naming the column and the precision."""
    config = config_text(glue_tables=glue([{"Name": "amount_col", "Type": "decimal(99,99)"}], table="analytics.money"))
    rc, out, err, server = serve_expecting_exit(make_server, config=config)
    assert_refused_at_start(rc, out, err, must_name=("amount_col",), server=server)
    assert "precision" in err, err[-2000:]


def test_type_nested_32_levels_is_accepted(make_server):
    """A type nested exactly 32 levels is fine: hydrant starts and the
    stream that uses it exists."""
    config = config_text(
        parquet_stream("deep32", "deep32-bucket", "analytics", "deep"),
        glue_tables=glue([{"Name": "id", "Type": "int"}, {"Name": "deep_col", "Type": nested_type(32)}]),
    )
    server = make_server(config=config)
    d = server.client().describe_delivery_stream(DeliveryStreamName="deep32")
    assert d["DeliveryStreamDescription"]["DeliveryStreamStatus"] == "ACTIVE"
    assert_alive(server)


def test_deeply_nested_record_goes_to_the_error_output(make_server):
    """To a Parquet stream with an inferred schema, JSON records nested 200
    levels (arrays, objects) go to the error output as
    format-conversion-failed while normal records sent with them land; the
    process stays up, and across a restart."""
    import pyarrow.parquet as pq

    config = config_text(
        parquet_stream("inferred", "inferred-bucket", "analytics", "anything"),
        glue_tables={"analytics.anything": {"infer_from_data": True}},
    )
    server = make_server(config=config)
    c = server.client()
    deep_array = '{"id": 2, "deep": ' + "[" * 200 + "1" + "]" * 200 + "}"
    deep_object = '{"id": 3, "deep": ' + '{"a": ' * 200 + "1" + "}" * 200 + "}"
    records = ['{"id": 1, "name": "first"}', deep_array, deep_object, '{"id": 4, "name": "last"}']
    r = c.put_record_batch(DeliveryStreamName="inferred", Records=[{"Data": x.encode()} for x in records])
    assert r["FailedPutCount"] == 0
    root = server.lake / "inferred-bucket"

    def landed():
        assert server.proc.poll() is None, f"hydrant died:\n{log_tail(server)}"
        events = [p for p in (root / "events").rglob("*") if p.is_file()] if (root / "events").exists() else []
        errors = [p for p in (root / "errors").rglob("*") if p.is_file()] if (root / "errors").exists() else []
        # Objects appear whole (written atomically), so what is there can be read.
        ids = sorted(i for p in events for i in pq.read_table(p).column("id").to_pylist())
        assert not {2, 3} & set(ids), f"a record nested 200 levels was written to Parquet: ids {ids}"
        docs = [json.loads(l) for p in errors for l in p.read_bytes().splitlines()]
        return (ids, errors, docs) if ids == [1, 4] and len(docs) == 2 else None

    ids, errors, docs = wait_for(landed, timeout=60, interval=0.2, what="the good records in Parquet and the deep ones in the error output")
    for p in errors:
        assert "format-conversion-failed" in str(p.relative_to(root)), p
    raws = sorted(json.loads(base64.b64decode(d["rawData"]))["id"] for d in docs)
    assert raws == [2, 3]
    assert_alive(server)

    assert server.stop() == 0, log_tail(server)
    server.start()
    assert_alive(server)
    put_ok(server, "inferred", b'{"id": 5, "name": "after"}')
    assert_alive(server)


# ---------------------------------------------------------------------------
# C. SQL cannot crash or exhaust hydrant


def post_query(server, sql, timeout=QUERY_TIMEOUT):
    """(status, parsed JSON body or raw text) of POST /-/query."""
    req = urllib.request.Request(server.endpoint + "/-/query", data=sql.encode(), method="POST",
                                 headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException, socket.timeout, TimeoutError) as e:
        died(server, f"POST /-/query ({len(sql)} bytes of SQL) got no answer: {e!r}")
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def chain(op, term, n):
    return f" {op} ".join([term] * n)


DEEP_SQL = {
    "plus-2000": ("select " + chain("+", "1", 2000), "nested deeper than"),
    "and-3000": ("select 1 where " + chain("and", "true", 3000), None),
    "or-3000": ("select 1 where " + chain("or", "false", 2999) + " or true", None),
    "concat-3000": ("select " + chain("||", "'a'", 3000), None),
    "parentheses-5000": ("select " + "(" * 5000 + "1" + ")" * 5000, None),
    "subqueries-200": ("select " + "(select " * 200 + "1" + ")" * 200, None),
    "functions-3000": ("select " + "abs(" * 3000 + "1" + ")" * 3000, None),
    "case-1000": ("select " + "case when true then " * 1000 + "1" + " else 0 end" * 1000, None),
    "text-over-64KiB": ("select '" + "x" * (70 * 1024) + "'", ("64 KiB", "65536")),
}


def sql_server(make_server, **query):
    top = {"query": query} if query else {}
    return make_server(config=config_text(stream_config(name="s", bucket="sql-bucket"), **top))


@pytest.mark.parametrize("case", list(DEEP_SQL))
def test_deep_or_huge_sql_is_refused_with_400(make_server, case):
    """POST /-/query with a pathologically deep expression or a text over
    64 KiB answers 400 with {"error": ...}; hydrant stays up, a modest query
    still answers 200, and puts still succeed."""
    sql, mention = DEEP_SQL[case]
    server = sql_server(make_server)
    status, body = post_query(server, sql)
    assert server.proc.poll() is None, f"hydrant died on the query:\n{log_tail(server)}"
    assert status == 400, f"answered {status}: {str(body)[:300]}"
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    if isinstance(mention, str):
        assert mention in body["error"], body["error"][:500]
    elif mention:
        assert any(m in body["error"] for m in mention), body["error"][:500]
    assert_alive(server)
    status, body = post_query(server, "select 1+1 as two")
    assert status == 200, body
    assert body["rows"] == [[2]], body
    put_ok(server, "s")
    assert_alive(server)


QUERY_LIMITS = {
    "max_result_rows": ({"max_result_rows": 1000}, "select * from unnest(range(100000))"),
    "max_result_mb": ({"max_result_mb": 1}, "select repeat('x', 100000) as s from unnest(range(100))"),
    "memory_mb": ({"memory_mb": 64},
                  # About 200 MB of aggregate state, which cannot spill. (A
                  # count(distinct) can: it completes, slowly, under the limit.)
                  "select length(string_agg(repeat('x', 100), ',')) from (select v from unnest(range(2000000)) as t(v))"),
    "timeout_seconds": ({"timeout_seconds": 2},
                        "select count(*) from unnest(range(100000)) as a(v) cross join unnest(range(100000)) as b(w) "
                        "where a.v * 3 + b.w = -1"),
}


@pytest.mark.parametrize("limit", list(QUERY_LIMITS))
def test_query_over_a_configured_limit_gets_400_naming_the_limit(make_server, limit):
    """With a `query:` limit in the config file, a query over it answers 400
    with an error naming the key (query.<limit>); hydrant stays healthy,
    puts still succeed, and a modest query answers 200 again (the stopped
    query really stops rather than holding the query threads)."""
    settings, sql = QUERY_LIMITS[limit]
    server = sql_server(make_server, **settings)
    status, body = post_query(server, sql)
    assert server.proc.poll() is None, f"hydrant died on the query:\n{log_tail(server)}"
    assert status == 400, f"answered {status}: {str(body)[:300]}"
    assert isinstance(body, dict) and f"query.{limit}" in body.get("error", ""), body
    assert_alive(server)
    put_ok(server, "s")
    answers = []

    def modest_query_answers():
        status, body = post_query(server, "select 1+1 as two")
        answers.append((status, body))
        return status == 200 and body["rows"] == [[2]]

    # A stopped query may finish its current batch first; it must not run on.
    try:
        wait_for(modest_query_answers, timeout=60, interval=0.5, what="a modest query to answer 200 after the stopped one")
    except AssertionError as e:
        raise AssertionError(f"{e}; last answers: {answers[-3:]}") from None
    assert_alive(server)
    put_ok(server, "s")
    assert_alive(server)


# ---------------------------------------------------------------------------
# D. An HTTP server with limits


def http_server(make_server, **http):
    return make_server(config=config_text(stream_config(name="s", bucket="http-bucket"), http=http))


def test_slowloris_headers_are_cut_off(make_server):
    """Request headers sent one byte every 0.5 s: with
    http.header_timeout_seconds 2 the server closes the connection (or
    answers 408) long before the headers are done."""
    server = http_server(make_server, header_timeout_seconds=2, body_timeout_seconds=2)
    head = ("GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + "a" * 100 + "\r\n\r\n").encode()
    s = raw_connect(server)
    r = RawResponse(s)
    start = time.time()
    sent = 0
    try:
        for b in head:
            try:
                s.sendall(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                r.closed = True
                break
            sent += 1
            # Wait half a second, or less if the server says something first.
            readable, _, _ = select.select([s], [], [], 0.5)
            if readable and r.pump():
                break
            assert time.time() - start < CLOSE_DEADLINE, f"still open after {CLOSE_DEADLINE}s ({sent} bytes of headers sent)"
    finally:
        s.close()
    elapsed = time.time() - start
    assert sent < len(head), "the whole slow header went through without the server cutting it off"
    assert r.closed or r.status is not None, "no close and no answer"
    assert r.status in (None, 408), f"a half-sent request was answered {r.status}"
    assert elapsed < CLOSE_DEADLINE
    assert_alive(server)


def test_idle_keep_alive_connection_is_closed(make_server):
    """After one full request and response, an idle keep-alive connection is
    closed by the server (after http.header_timeout_seconds)."""
    server = http_server(make_server, header_timeout_seconds=2, body_timeout_seconds=2)
    s = raw_connect(server)
    try:
        s.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        r = wait_response(s, CLOSE_DEADLINE)
        assert r.status == 200, r.buf[:300]
        assert not r.closed, "the server closed a keep-alive connection right after the response"
        start = time.time()
        idle = RawResponse(s)
        while not idle.closed:
            assert time.time() - start < CLOSE_DEADLINE, f"idle connection still open after {CLOSE_DEADLINE}s"
            select.select([s], [], [], 1.0)
            idle.pump()
        assert idle.buf in (b"",) or b" 408 " in idle.buf[:20], idle.buf[:300]
    finally:
        s.close()
    assert_alive(server)


def test_stalled_body_is_answered_408_or_closed(make_server):
    """A PutRecordBatch whose body stops after 1000 of 8388598 declared
    bytes: with http.body_timeout_seconds 2 the server answers 408 (a 4xx)
    or closes; nothing is taken and normal puts still succeed."""
    server = http_server(make_server, header_timeout_seconds=2, body_timeout_seconds=2)
    s = raw_connect(server)
    try:
        s.sendall(aws_head("PutRecordBatch", 8388598) + b'{"DeliveryStreamName": "s", "Records": [{"Data": "' + b"A" * 950)
        r = wait_response(s, CLOSE_DEADLINE)
    finally:
        s.close()
    assert r.status is None or 400 <= r.status < 500, f"answered {r.status}: {r.buf[:300]!r}"
    assert streams_info(server, "s")["records_in"] == 0
    assert_alive(server)
    put_ok(server, "s")


def test_body_budget_refuses_what_it_cannot_hold_with_503(make_server):
    """With http.max_buffered_body_mb 16, ten connections each declaring an
    8388598-byte body and stalling after part of it: at most two are being
    read, the rest are answered 503 ServiceUnavailableException; meanwhile a
    normal put_record succeeds."""
    server = http_server(make_server, max_buffered_body_mb=16, body_timeout_seconds=300)
    socks = []
    try:
        for _ in range(10):
            s = raw_connect(server)
            s.sendall(aws_head("PutRecordBatch", 8388598) + b'{"DeliveryStreamName": "s", "Records": [{"Data": "' + b"A" * 950)
            socks.append((s, RawResponse(s)))
        end = time.time() + CLOSE_DEADLINE
        while True:
            answered = [r for _, r in socks if r.pump()]
            if len(answered) >= 8:
                break
            if server.proc.poll() is not None:
                died(server, "hydrant died with 10 stalled 8 MiB requests")
            if time.time() > end:
                pytest.fail(f"only {len(answered)} of 10 stalled 8 MiB requests were answered within {CLOSE_DEADLINE}s "
                            f"(statuses {[r.status for r in answered]}); want at least 8 refused with 503")
            select.select([s for s, r in socks if not r.done()], [], [], 0.5)
        for r in answered:
            assert r.status == 503, f"answered {r.status} (closed={r.closed}): {r.buf[:300]!r}"
            assert "ServiceUnavailableException" in (r.headers.get("x-amzn-errortype", "") + r.body.decode(errors="replace"))
        put_ok(server, "s")
        # "Meanwhile": the two being read are still open and unanswered.
        still = [r for _, r in socks if not r.pump()]
        assert len(still) <= 2
    finally:
        for s, _ in socks:
            s.close()
    assert_alive(server)
    put_ok(server, "s")


def test_connections_beyond_the_cap_are_refused(make_server):
    """With http.max_connections 20, of 40 idle connections the ones beyond
    the cap are refused (503 and closed, or closed at once); once they are
    closed, a new boto3 client works."""
    server = http_server(make_server, max_connections=20, header_timeout_seconds=120)
    socks = []
    try:
        for _ in range(40):
            try:
                s = raw_connect(server, timeout=10)
            except ConnectionError:
                socks.append((None, None))
                continue
            socks.append((s, RawResponse(s)))
        refused = lambda: [r for s, r in socks if s is None or r.pump()]
        end = time.time() + CLOSE_DEADLINE
        while len(refused()) < 20:
            if server.proc.poll() is not None:
                died(server, "hydrant died holding 40 connections")
            assert time.time() < end, f"only {len(refused())} of 40 connections refused with max_connections 20"
            time.sleep(0.1)
        for r in refused():
            if r is not None and r.buf:
                assert r.status == 503, f"an over-cap connection was answered {r.status}: {r.buf[:300]!r}"
        kept = 40 - len(refused())
        assert kept >= 10, f"only {kept} connections kept open under a cap of 20"
    finally:
        for s, _ in socks:
            if s is not None:
                s.close()
    c = server.client(read_timeout=30, connect_timeout=10)

    def works():
        try:
            c.put_record(DeliveryStreamName="s", Record={"Data": b"after the flood"})
            return True
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            return False

    wait_for(works, timeout=CLOSE_DEADLINE, interval=0.2, what="a new client to be served once the idle connections closed")
    assert_alive(server)


def test_half_closed_requests_are_answered_and_counted_once(make_server):
    """Twenty PutRecordBatch requests, each followed by shutdown(SHUT_WR):
    each gets a whole 200 with FailedPutCount 0, /-/streams counts exactly
    the acknowledged records in, and after delivery as delivered."""
    server = make_server(config=config_text(stream_config(name="half", bucket="half-bucket")))
    acked = 0
    problems = []
    for i in range(20):
        body = json.dumps({"DeliveryStreamName": "half", "Records": [{"Data": base64.b64encode(f"half-{i}".encode()).decode()}]}).encode()
        s = raw_connect(server)
        try:
            s.sendall(aws_head("PutRecordBatch", len(body), extra="Connection: close\r\n") + body)
            s.shutdown(socket.SHUT_WR)
            r = wait_response(s, CLOSE_DEADLINE)
        finally:
            s.close()
        if r.status != 200 or not r.complete():
            problems.append(f"request {i}: status {r.status}, {len(r.buf)} bytes, reset={r.reset}: {r.buf[:200]!r}")
            continue
        doc = json.loads(r.body)
        if doc.get("FailedPutCount") != 0:
            problems.append(f"request {i}: {doc}")
            continue
        acked += 1
    assert server.proc.poll() is None, log_tail(server)
    info = streams_info(server, "half")
    assert not problems, f"{len(problems)} of 20 half-closed requests not answered 200 " \
                         f"(records_in {info['records_in']}):\n" + "\n".join(problems[:5])
    assert info["records_in"] == acked == 20, info
    wait_for(lambda: streams_info(server, "half")["records_delivered"] == acked, timeout=30, what="records_delivered == acknowledged")
    lines = [l for p in server.objects("half-bucket") for l in p.read_bytes().splitlines()]
    assert Counter(lines) == Counter(f"half-{i}".encode() for i in range(20))
    assert_alive(server)


# ---------------------------------------------------------------------------
# E. Listening beyond loopback


def test_listening_beyond_loopback_needs_the_flag(make_server):
    """`--listen 0.0.0.0:PORT` without keys is refused, naming
    --allow-unauthenticated-network; with that flag hydrant starts and warns
    that it is unauthenticated."""
    port = free_port()
    rc, out, err, server = serve_expecting_exit(make_server, listen=f"0.0.0.0:{port}")
    assert_refused_at_start(rc, out, err, must_name=("--allow-unauthenticated-network",), server=server)

    port = free_port()
    rc, out, err, server = serve_expecting_exit(make_server, listen=f"0.0.0.0:{port}", extra=["--allow-unauthenticated-network"])
    assert rc is None, f"hydrant exited with {rc} despite --allow-unauthenticated-network:\n{(out + err)[-3000:]}"
    assert_alive(server)
    status, _ = get(server, "/-/ready")
    assert status == 200
    log = server.log_path.with_suffix(".err").read_text(errors="replace")
    assert any("WARN" in l and "unauthenticated" in l for l in log.splitlines()), f"no warning about unauthenticated:\n{log[-2000:]}"
    assert server.stop() == 0


# ---------------------------------------------------------------------------
# F. Log corruption is not a torn tail


def frames(segment: bytes):
    """(start, data_start, data_end) of each frame: len u32, crc u32, arrival i64, data."""
    out, pos = [], 0
    while pos + 16 <= len(segment):
        (n,) = struct.unpack_from("<I", segment, pos)
        out.append((pos, pos + 16, pos + 16 + n))
        pos += 16 + n
    assert pos == len(segment), "the segment does not parse as whole frames"
    return out


@pytest.mark.parametrize("where", ["middle", "tail"])
def test_flipped_byte_in_the_log_loses_one_record_not_the_rest(make_server, where):
    """1000 acknowledged records, SIGKILL, one byte flipped in one record of
    the active log segment, restart, SIGTERM: the lake holds the other 999
    records exactly once. In the middle of the segment that is corruption:
    the damaged record is quarantined beside the segment, /-/streams says
    log_records_lost 1, and the log does not call it a torn tail of records
    never acknowledged. (At the very end it is indistinguishable from a torn
    tail; only the count is checked there.)"""
    name = "corrupt"
    server = make_server(config=config_text(stream_config(name=name, bucket="corrupt-bucket", size_mb=128, interval=900)))
    c = server.client()
    for k in range(0, 1000, 500):
        r = c.put_record_batch(DeliveryStreamName=name, Records=[{"Data": json.dumps({"id": i}).encode()} for i in range(k, k + 500)])
        assert r["FailedPutCount"] == 0
    server.kill()

    log_dir = server.data_dir / "streams" / name / "log"
    segment = sorted(log_dir.glob("*.log"))[-1]
    raw = bytearray(segment.read_bytes())
    fs = frames(bytes(raw))
    assert len(fs) == 1000, f"{len(fs)} frames in {segment.name}"
    if where == "middle":
        k = next(i for i, (start, _, end) in enumerate(fs) if start <= len(raw) // 2 < end)
        at = (fs[k][1] + fs[k][2]) // 2
    else:
        k = len(fs) - 1
        at = len(raw) - 1
    lost_id = json.loads(bytes(raw[fs[k][1]:fs[k][2]]))["id"]
    raw[at] ^= 0xFF
    segment.write_bytes(bytes(raw))

    server.start()
    assert_alive(server)
    if where == "middle":
        info = streams_info(server, name)
        assert info.get("log_records_lost") == 1, f"/-/streams: {info}"
        stream_dir = server.data_dir / "streams" / name
        quarantined = [p for p in stream_dir.rglob("*") if p.is_file() and re.search("corrupt|quarantine", p.name)]
        assert quarantined, f"no quarantine file beside the segment: {sorted(str(p.relative_to(stream_dir)) for p in stream_dir.rglob('*'))}"
    rc = server.stop(signal.SIGTERM)
    assert rc == 0, f"exit code {rc}\n{log_tail(server)}"
    ids = Counter(json.loads(l)["id"] for p in server.objects("corrupt-bucket") for l in p.read_bytes().splitlines())
    assert sum(ids.values()) == 999, f"{sum(ids.values())} records in the lake, want 999 (lost: {1000 - len(ids)})"
    assert set(ids) == set(range(1000)) - {lost_id}, f"missing {sorted(set(range(1000)) - set(ids))[:20]}"
    assert set(ids.values()) == {1}, "records delivered twice"
    if where == "middle":
        assert "never acknowledged" not in server.log(), "corruption reported as a torn tail of never-acknowledged records"


# ---------------------------------------------------------------------------
# G. Delivery failure is reported, never a crash loop


def test_garbage_delivery_state_is_reported_not_a_crash_loop(make_server):
    """With delivery.json overwritten by garbage, hydrant still starts and
    keeps running: /-/healthy answers 503 naming the stream and
    delivery.json, DescribeDeliveryStream carries a FailureDescription about
    it, and puts are still taken; a second restart reports the same."""
    name = "broken-state"
    server = make_server(config=config_text(stream_config(name=name, bucket="state-bucket")))
    c = server.client()
    c.put_record_batch(DeliveryStreamName=name, Records=[{"Data": f"rec-{i}\n".encode()} for i in range(3)])
    wait_for(lambda: server.objects("state-bucket"), timeout=30, what="the first delivery")
    server.kill()
    (server.data_dir / "streams" / name / "delivery.json").write_text("garbage")

    for attempt in range(2):
        spawn(server)
        status = until_answers(server, "/-/healthy")
        if status is None:
            died(server, f"hydrant exited at start #{attempt + 1} with a garbage delivery.json")

        # Delivery may find the problem a moment after the port opens.
        def unhealthy():
            if server.proc.poll() is not None:
                died(server, f"hydrant exited after start #{attempt + 1} with a garbage delivery.json")
            return get(server, "/-/healthy")[0] == 503

        wait_for(unhealthy, timeout=30, interval=0.1, what="/-/healthy to answer 503 for the broken delivery state")
        body = assert_alive(server, healthy=503).decode(errors="replace")
        assert name in body and "delivery.json" in body, f"/-/healthy body: {body[:1000]!r}"
        d = server.client().describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
        failure = d.get("FailureDescription")
        assert failure and "delivery.json" in failure.get("Details", ""), f"FailureDescription: {failure!r}"
        put_ok(server, name, f"after-{attempt}".encode())
        # Still running a little later (no crash loop behind a first answer).
        wait_for(lambda: streams_info(server, name)["records_in"] >= 1, timeout=10, what="the put counted")
        assert_alive(server, healthy=503)
        server.kill()


# ---------------------------------------------------------------------------
# H. Config errors name the file and key


def test_bad_listen_in_config_names_the_file_and_key(make_server):
    """`listen: not-an-addr` in the config file: exit non-zero, stderr naming
    the config file and `listen`, no panic."""
    server = make_server(start=False)
    cfg = server.data_dir.parent / "bad-listen.yaml"
    cfg.write_text("listen: not-an-addr\n")
    server.config_path = cfg
    out_path, err_path = server.log_path.with_suffix(".out"), server.log_path.with_suffix(".err")
    # No --listen on the command line, so the config's listen is the one used.
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        server.proc = subprocess.Popen(
            [hydrant_bin(), "serve", "--data-dir", str(server.data_dir), "--config", str(cfg)],
            stdout=out, stderr=err, env={**os.environ, "RUST_LOG": "info"})
    try:
        rc = server.proc.wait(timeout=EXIT_DEADLINE)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail("hydrant did not exit on `listen: not-an-addr`")
    assert_refused_at_start(rc, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"),
                            must_name=(str(cfg), "listen"), server=server)


def test_stream_declared_twice_names_the_file_and_stream(make_server):
    """The same delivery stream twice in the config file: exit non-zero,
    stderr naming the config file and the stream, no panic."""
    s = stream_config(name="twice-declared", bucket="twice-bucket")
    rc, out, err, server = serve_expecting_exit(make_server, config=config_text(s, s))
    assert_refused_at_start(rc, out, err, must_name=(str(server.config_path), "twice-declared"), server=server)


def test_bad_tls_and_auth_in_config_name_the_file_and_key(make_server, tmp_path):
    """A TLS certificate that is not there, and an auth key whose secret's
    environment variable is unset: exit non-zero, stderr naming the config
    file and the key (`tls`, `auth`), no panic."""
    missing = tmp_path / "no-such-cert.pem"
    rc, out, err, server = serve_expecting_exit(
        make_server, config=json.dumps({"tls": {"cert_file": str(missing), "key_file": str(missing)}}))
    assert_refused_at_start(rc, out, err, must_name=(str(server.config_path), "tls", str(missing)), server=server)
    keys = {"auth": {"keys": [{"access_key_id": "AKIDENVUNSETEXAMPLE", "secret_access_key_env": "HYDRANT_TEST_UNSET_SECRET"}]}}
    rc, out, err, server = serve_expecting_exit(make_server, config=json.dumps(keys))
    assert_refused_at_start(rc, out, err, must_name=(str(server.config_path), "auth", "HYDRANT_TEST_UNSET_SECRET"), server=server)


# ---------------------------------------------------------------------------
# I. Full disk on create


def test_create_on_a_full_disk_is_service_unavailable(make_server, tmp_path):
    """With the data dir on a full 4 MiB tmpfs, CreateDeliveryStream fails
    with ServiceUnavailableException (HTTP 503), not InternalFailure; hydrant
    stays up, and once space is freed the stream can be created."""
    mnt = tmp_path / "small-disk"
    mount_tmpfs(mnt, "4m")
    server = None
    try:
        server = make_server(data_dir=mnt / "data")
        filler = mnt / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
        c = server.client(read_timeout=30)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            c.create_delivery_stream(**stream_config(name="full", bucket="full-bucket"))
        code, status, message = client_error(e.value)
        assert (code, status) == ("ServiceUnavailableException", 503), (code, status, message)
        assert_alive(server)

        filler.unlink()

        def created():
            try:
                c.create_delivery_stream(**stream_config(name="full", bucket="full-bucket"))
                return True
            except c.exceptions.ServiceUnavailableException:
                return False

        wait_for(created, timeout=30, interval=0.5, what="the create to succeed once space was freed")
        put_ok(server, "full")
        assert_alive(server)
    finally:
        if server is not None and server.proc is not None and server.proc.poll() is None:
            server.kill()
        unmount_tmpfs(mnt)
