"""Authentication and TLS, end to end, with the clients people use.

A hydrant with `auth.keys` in its config takes only requests that prove a
key: SigV4 for the AWS APIs (boto3, the AWS CLI, hand-signed requests), a
login session or a SigV4 signature for hydrant's own `/-/` API, a bearer
token for `/-/metrics`. Each key may be limited to actions, streams and
buckets. With `tls:` it serves HTTPS.

1. Firehose: every operation with an admin key; the error codes an SDK
   raises for a wrong secret, an unknown key, no signature, an old
   signature, a tampered body; a producer key limited to puts on events-*.
2. S3 read API: a reader key limited to bucket lake-a; presigned URLs (valid,
   expired, pointed at another key); the AWS CLI.
3. hydrant's own endpoints: ready/healthy open, metrics behind a token, the
   login session (cookie flags, per-key visibility), the Origin check on
   POST /-/query, `hydrant query` signing with the environment's key.
4. With keys, listening on 0.0.0.0 needs no extra flag.
5. TLS: a CA of our own, boto3 and the AWS CLI trusting it, plain HTTP and
   clients that do not trust it failing.

The servers here are shared per module (starting hydrant is cheap, but the
machine may be busy), and every wait is for an event under a generous
deadline.
"""

import base64
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from unittest import mock

import boto3
import botocore
import botocore.auth
import botocore.config
import botocore.exceptions
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import AWS, Server, aws_env, free_port, hydrant_bin, stream_config, wait_for

REGION = "eu-west-1"

ADMIN = ("AKIAHYDRANTADMIN0001", "admin-secret-0123456789")
PRODUCER = ("AKIAHYDRANTPRODUCER1", "producer-secret-0123456789")
READER = ("AKIAHYDRANTREADER001", "reader-secret-0123456789")
# Read-only on the /-/ API, and only for events-* streams.
WATCHER = ("AKIAHYDRANTWATCHER01", "watcher-secret-0123456789")
UNKNOWN = ("AKIAHYDRANTNOBODY001", "nobody-secret-0123456789")
METRICS_TOKEN = "metrics-token-0123456789"

START_DEADLINE = 60.0
DELIVERY_DEADLINE = 60.0
CMD_TIMEOUT = 120


def keys_config():
    return {
        "keys": [
            {"access_key_id": ADMIN[0], "secret_access_key": ADMIN[1]},
            {
                "access_key_id": PRODUCER[0],
                "secret_access_key_env": "PRODUCER_SECRET",
                "actions": ["firehose:PutRecord", "firehose:PutRecordBatch"],
                "streams": ["events-*"],
            },
            {
                "access_key_id": READER[0],
                "secret_access_key": READER[1],
                "actions": ["s3:*", "hydrant:Read"],
                "buckets": ["lake-a"],
            },
            {
                "access_key_id": WATCHER[0],
                "secret_access_key": WATCHER[1],
                "actions": ["hydrant:Read"],
                "streams": ["events-*"],
            },
        ],
        "metrics_token": METRICS_TOKEN,
    }


# Streams declared in the config of the shared server.
DECLARED = [
    stream_config(name="events-1", bucket="lake-p", prefix="p/"),
    stream_config(name="events-s3a", bucket="lake-a", prefix="a/"),
    stream_config(name="events-s3b", bucket="lake-a", prefix="b/"),
    stream_config(name="other", bucket="lake-b", prefix="o/"),
]


# ---------------------------------------------------------------------------
# Helpers


class AuthServer(Server):
    """A Server that can listen beyond loopback, speak HTTPS and start with
    extra environment (the producer's secret)."""

    def __init__(self, data_dir, config, listen_host="127.0.0.1", ca=None, env=None):
        super().__init__(data_dir, config)
        self.listen_host = listen_host
        self.ca = ca
        self.env = env or {}
        if ca is not None:
            self.endpoint = f"https://127.0.0.1:{self.port}"

    def ssl_context(self):
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca else None

    def start(self, timeout: float = START_DEADLINE):
        args = [hydrant_bin(), "serve", "--listen", f"{self.listen_host}:{self.port}", "--data-dir", str(self.data_dir)]
        if self.config_path:
            args += ["--config", str(self.config_path)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "info", **self.env})
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hydrant exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _, _ = http_request(f"{self.endpoint}/-/ready", context=self.ssl_context(), timeout=2)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"hydrant not ready within {timeout}s:\n{self.log()}")


def _opener(context=None):
    handlers = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def http_request(url, method="GET", headers=None, body=None, context=None, timeout=30):
    """One HTTP request; returns (status, headers, body) for any status."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with _opener(context).open(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def firehose(endpoint, key, **kw):
    config = botocore.config.Config(retries={"max_attempts": 0}, **kw.pop("config", {}))
    return boto3.client(
        "firehose",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=config,
        **kw,
    )


def s3(endpoint, key, **config):
    return boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 0}, **config),
    )


def error_code(call):
    """Runs `call`, which must fail with a ClientError; returns (code, message)."""
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    err = e.value.response["Error"]
    return err.get("Code"), err.get("Message", "")


def sign_firehose(endpoint, key, op, payload, at=None):
    """Signs a Firehose request the way the SDKs do (botocore's SigV4Auth),
    optionally as if the clock read `at` (naive UTC). Returns (headers, body)."""
    body = json.dumps(payload).encode()
    req = AWSRequest(
        method="POST",
        url=endpoint + "/",
        data=body,
        headers={"X-Amz-Target": f"Firehose_20150804.{op}", "Content-Type": "application/x-amz-json-1.1"},
    )
    signer = botocore.auth.SigV4Auth(Credentials(key[0], key[1]), "firehose", REGION)
    if at is None:
        signer.add_auth(req)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=at):
            signer.add_auth(req)
    return dict(req.headers.items()), body


def aws_error(status, headers, body):
    """The error code and message of an AWS JSON 1.1 error response."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {}
    code = doc.get("__type") or headers.get("x-amzn-ErrorType") or ""
    code = code.split("#")[-1].split(":")[0]
    return code, doc.get("message") or doc.get("Message") or ""


def run_aws(endpoint, key, *args, extra=()):
    env = aws_env()
    env.update(AWS_ACCESS_KEY_ID=key[0], AWS_SECRET_ACCESS_KEY=key[1])
    return subprocess.run(
        [str(AWS), "--endpoint-url", endpoint, "--region", REGION, *extra, *args],
        capture_output=True, text=True, encoding="utf-8", env=env, timeout=CMD_TIMEOUT,
    )


def run_query(endpoint, key, sql):
    env = aws_env()
    env.update(AWS_ACCESS_KEY_ID=key[0], AWS_SECRET_ACCESS_KEY=key[1])
    return subprocess.run(
        [hydrant_bin(), "query", sql, "--endpoint", endpoint, "--format", "json"],
        capture_output=True, text=True, env=env, timeout=CMD_TIMEOUT,
    )


def show(p):
    return f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"


def lines_in(server, bucket, prefix=""):
    out = []
    for obj in server.objects(bucket):
        if str(obj.relative_to(server.lake / bucket)).startswith(prefix):
            out.extend(obj.read_bytes().splitlines())
    return out


def login(endpoint, key, context=None, origin=None):
    """POST /-/login; returns (status, headers, body)."""
    headers = {"Content-Type": "application/json"}
    if origin:
        headers["Origin"] = origin
    body = json.dumps({"access_key_id": key[0], "secret_access_key": key[1]}).encode()
    return http_request(f"{endpoint}/-/login", "POST", headers, body, context=context)


def session_cookie(endpoint, key, context=None):
    """Logs in and returns the Cookie header value to send."""
    status, headers, body = login(endpoint, key, context=context)
    assert status == 200, f"login with {key[0]} answered {status}: {body!r}"
    m = re.search(r"hydrant_session=([^;]+)", headers.get("Set-Cookie", ""))
    assert m, f"no hydrant_session cookie in {headers.get_all('Set-Cookie')}"
    return f"hydrant_session={m.group(1)}"


def json_body(body):
    try:
        return json.loads(body)
    except ValueError:
        pytest.fail(f"not JSON: {body[:500]!r}")


def alive(server):
    assert server.proc.poll() is None, f"hydrant died (exit {server.proc.returncode}):\n{server.log()[-3000:]}"


def stop(server):
    if server.proc is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()


# ---------------------------------------------------------------------------
# The shared server: four keys, a metrics token, four declared streams.


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    data = root / "data"
    data.mkdir()
    count = [{"name": "per_minute", "window": {"type": "tumbling", "size_seconds": 60}, "measures": [{"op": "count"}]}]
    aggregates = {"events-1": count, "other": count}
    config = json.dumps({"auth": keys_config(), "delivery_streams": DECLARED, "aggregates": aggregates})
    server = AuthServer(data, config, env={"PRODUCER_SECRET": PRODUCER[1]})
    try:
        yield server.start()
    finally:
        stop(server)


@pytest.fixture(scope="module")
def lake_a(srv):
    """Records put (by the admin) into both lake-a streams and into lake-b,
    delivered. Returns {bucket: {key: bytes}} once every record has landed."""
    admin = firehose(srv.endpoint, ADMIN)
    sent = {}
    for stream, n in [("events-s3a", 30), ("events-s3b", 20), ("other", 10)]:
        records = [json.dumps({"stream": stream, "i": i}).encode() for i in range(n)]
        r = admin.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": d} for d in records])
        assert r["FailedPutCount"] == 0, r
        sent[stream] = records
    for stream, bucket, prefix in [("events-s3a", "lake-a", "a/"), ("events-s3b", "lake-a", "b/"), ("other", "lake-b", "o/")]:
        # lake-a gets only these records; lake-b may hold others too.
        wait_for(lambda: set(sent[stream]) <= set(lines_in(srv, bucket, prefix)),
                 timeout=DELIVERY_DEADLINE, what=f"{stream}'s records in {bucket}/{prefix}")
    assert sorted(lines_in(srv, "lake-a")) == sorted(sent["events-s3a"] + sent["events-s3b"])
    return {b: {k: (srv.lake / b / k).read_bytes() for k in srv.keys(b)} for b in ("lake-a", "lake-b")}


# ---------------------------------------------------------------------------
# 1. Firehose


def test_admin_key_runs_every_firehose_operation_and_records_land(srv):
    c = firehose(srv.endpoint, ADMIN)
    name = "admin-ops"
    arn = c.create_delivery_stream(**stream_config(name=name, bucket="lake-ops", prefix="ops/"))["DeliveryStreamARN"]
    assert arn.endswith(f":deliverystream/{name}"), arn
    d = wait_for(lambda: (lambda x: x if x["DeliveryStreamStatus"] == "ACTIVE" else None)(
        c.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]),
        timeout=30, what="the stream to be ACTIVE")
    assert d["DeliveryStreamName"] == name
    assert name in c.list_delivery_streams()["DeliveryStreamNames"]
    assert c.put_record(DeliveryStreamName=name, Record={"Data": b"one"})["RecordId"]
    r = c.put_record_batch(DeliveryStreamName=name, Records=[{"Data": b"two"}, {"Data": b"three"}])
    assert r["FailedPutCount"] == 0, r
    wait_for(lambda: sorted(lines_in(srv, "lake-ops")) == [b"one", b"three", b"two"],
             timeout=DELIVERY_DEADLINE, what="the three records in lake-ops")
    assert all(str(p.relative_to(srv.lake / "lake-ops")).startswith("ops/") for p in srv.objects("lake-ops"))
    c.delete_delivery_stream(DeliveryStreamName=name)
    wait_for(lambda: name not in c.list_delivery_streams()["DeliveryStreamNames"], timeout=30,
             what="the deleted stream to leave the list")


def test_wrong_secret_is_invalid_signature(srv):
    c = firehose(srv.endpoint, (ADMIN[0], "not-the-admin-secret-000"))
    code, msg = error_code(lambda: c.list_delivery_streams())
    assert code == "InvalidSignatureException", (code, msg)
    code, msg = error_code(lambda: c.put_record(DeliveryStreamName="events-1", Record={"Data": b"x"}))
    assert code == "InvalidSignatureException", (code, msg)


def test_unknown_access_key_is_unrecognized_client(srv):
    c = firehose(srv.endpoint, UNKNOWN)
    code, msg = error_code(lambda: c.list_delivery_streams())
    assert code == "UnrecognizedClientException", (code, msg)


def test_unsigned_request_is_missing_authentication_token(srv):
    c = firehose(srv.endpoint, ADMIN, config={"signature_version": botocore.UNSIGNED})
    code, msg = error_code(lambda: c.list_delivery_streams())
    assert code == "MissingAuthenticationTokenException", (code, msg)
    code, msg = error_code(lambda: c.put_record(DeliveryStreamName="events-1", Record={"Data": b"x"}))
    assert code == "MissingAuthenticationTokenException", (code, msg)


def test_signature_older_than_15_minutes_is_expired(srv):
    payload = {}
    # The same signing path with the real clock works: the signer is right.
    headers, body = sign_firehose(srv.endpoint, ADMIN, "ListDeliveryStreams", payload)
    status, h, b = http_request(srv.endpoint + "/", "POST", headers, body)
    assert status == 200, (status, b)
    assert "DeliveryStreamNames" in json_body(b)

    old = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=20)
    headers, body = sign_firehose(srv.endpoint, ADMIN, "ListDeliveryStreams", payload, at=old)
    assert headers["X-Amz-Date"] == old.strftime("%Y%m%dT%H%M%SZ"), headers
    status, h, b = http_request(srv.endpoint + "/", "POST", headers, body)
    code, msg = aws_error(status, h, b)
    assert status == 400 and code == "InvalidSignatureException", (status, dict(h), b)
    assert "Signature expired" in msg, msg


def test_signature_from_15_minutes_ahead_is_refused(srv):
    """A clock far ahead is as wrong as one far behind, and the message says
    which way it is off, as AWS's does ("Signature not yet current: <date>
    is still later than <now + 15 min>"): someone fixing a clock needs to
    know whether it is fast or slow."""
    ahead = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(minutes=20)
    headers, body = sign_firehose(srv.endpoint, ADMIN, "ListDeliveryStreams", {}, at=ahead)
    status, h, b = http_request(srv.endpoint + "/", "POST", headers, body)
    code, msg = aws_error(status, h, b)
    assert status == 400 and code == "InvalidSignatureException", (status, dict(h), b)
    assert "not yet current" in msg and "expired" not in msg.lower(), msg


def test_tampered_body_is_invalid_signature(srv):
    """Signed, then one byte of the body changed (the record AAAA becomes
    AAAB): refused, and the changed record never lands. The same request
    untampered goes through, so the signing here is right."""
    payload = {"DeliveryStreamName": "events-1", "Record": {"Data": "AAAA"}}
    headers, body = sign_firehose(srv.endpoint, ADMIN, "PutRecord", payload)
    i = body.index(b'"AAAA"') + 4
    tampered = body[:i] + b"B" + body[i + 1:]
    assert len(tampered) == len(body) and tampered != body and json.loads(tampered)["Record"]["Data"] == "AAAB"
    status, h, b = http_request(srv.endpoint + "/", "POST", headers, tampered)
    code, msg = aws_error(status, h, b)
    assert status == 400 and code == "InvalidSignatureException", (status, dict(h), b)

    headers, body = sign_firehose(srv.endpoint, ADMIN, "PutRecord", payload)
    status, h, b = http_request(srv.endpoint + "/", "POST", headers, body)
    assert status == 200 and json_body(b).get("RecordId"), (status, b)
    wait_for(lambda: b"\x00\x00\x00" in lines_in(srv, "lake-p"), timeout=DELIVERY_DEADLINE,
             what="the untampered record in lake-p")
    assert b"\x00\x00\x01" not in lines_in(srv, "lake-p"), "the tampered record landed"


def test_producer_key_may_only_put_to_events_streams(srv):
    p = firehose(srv.endpoint, PRODUCER)
    assert p.put_record(DeliveryStreamName="events-1", Record={"Data": b"from-producer"})["RecordId"]
    r = p.put_record_batch(DeliveryStreamName="events-1", Records=[{"Data": b"batch-producer"}])
    assert r["FailedPutCount"] == 0, r

    code, msg = error_code(lambda: p.put_record(DeliveryStreamName="other", Record={"Data": b"x"}))
    assert code == "AccessDeniedException", (code, msg)
    code, msg = error_code(lambda: p.put_record_batch(DeliveryStreamName="other", Records=[{"Data": b"x"}]))
    assert code == "AccessDeniedException", (code, msg)
    code, msg = error_code(lambda: p.create_delivery_stream(**stream_config(name="events-new", bucket="lake-x")))
    assert code == "AccessDeniedException", (code, msg)
    code, msg = error_code(lambda: p.list_delivery_streams())
    assert code == "AccessDeniedException", (code, msg)

    admin = firehose(srv.endpoint, ADMIN)
    names = admin.list_delivery_streams()["DeliveryStreamNames"]
    assert "events-new" not in names, names
    # What was allowed lands; what was refused does not (a later put to
    # "other" lands after anything put there before it).
    assert admin.put_record(DeliveryStreamName="other", Record={"Data": b"admin-marker"})["RecordId"]
    wait_for(lambda: {b"from-producer", b"batch-producer"} <= set(lines_in(srv, "lake-p")),
             timeout=DELIVERY_DEADLINE, what="the producer's records in lake-p")
    wait_for(lambda: b"admin-marker" in lines_in(srv, "lake-b"), timeout=DELIVERY_DEADLINE,
             what="the admin's marker in lake-b")
    assert b"x" not in lines_in(srv, "lake-b"), "a refused put reached the lake"
    assert not srv.objects("lake-x"), "a refused CreateDeliveryStream delivered"


def test_aws_cli_firehose_with_the_admin_key_and_a_wrong_secret(srv):
    p = run_aws(srv.endpoint, ADMIN, "firehose", "list-delivery-streams", extra=["--output", "json"])
    assert p.returncode == 0, show(p)
    names = json.loads(p.stdout)["DeliveryStreamNames"]
    assert {"events-1", "other"} <= set(names), names

    p = run_aws(srv.endpoint, (ADMIN[0], "not-the-admin-secret-000"), "firehose", "list-delivery-streams")
    assert p.returncode != 0, show(p)
    assert "InvalidSignatureException" in p.stderr, show(p)


# ---------------------------------------------------------------------------
# 2. S3 read API


def test_reader_lists_and_gets_objects_in_lake_a(srv, lake_a):
    c = s3(srv.endpoint, READER)
    listed = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket="lake-a"):
        listed += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    assert sorted(listed) == sorted((k, len(v)) for k, v in lake_a["lake-a"].items())
    assert any(k.startswith("a/") for k, _ in listed) and any(k.startswith("b/") for k, _ in listed), listed
    for key, data in lake_a["lake-a"].items():
        assert c.get_object(Bucket="lake-a", Key=key)["Body"].read() == data, key


def test_reader_may_not_read_lake_b(srv, lake_a):
    c = s3(srv.endpoint, READER)
    code, msg = error_code(lambda: c.list_objects_v2(Bucket="lake-b"))
    assert code == "AccessDenied", (code, msg)
    key = next(iter(lake_a["lake-b"]))
    code, msg = error_code(lambda: c.get_object(Bucket="lake-b", Key=key))
    assert code == "AccessDenied", (code, msg)


def test_s3_wrong_secret_unknown_key_and_unsigned(srv, lake_a):
    code, msg = error_code(lambda: s3(srv.endpoint, (READER[0], "not-the-reader-secret-00")).list_objects_v2(Bucket="lake-a"))
    assert code == "SignatureDoesNotMatch", (code, msg)
    code, msg = error_code(lambda: s3(srv.endpoint, UNKNOWN).list_objects_v2(Bucket="lake-a"))
    assert code == "InvalidAccessKeyId", (code, msg)
    unsigned = s3(srv.endpoint, READER, signature_version=botocore.UNSIGNED)
    code, msg = error_code(lambda: unsigned.list_objects_v2(Bucket="lake-a"))
    assert code == "AccessDenied", (code, msg)
    key = next(iter(lake_a["lake-a"]))
    code, msg = error_code(lambda: unsigned.get_object(Bucket="lake-a", Key=key))
    assert code == "AccessDenied", (code, msg)


# Presigned URLs as users make them: boto3's S3 client with no
# signature_version presigns with SigV2 query strings
# (AWSAccessKeyId/Signature/Expires), and so does `aws s3 presign` (CLI v1);
# with signature_version="s3v4" it presigns with SigV4 (X-Amz-Signature).
PRESIGN = {"boto3-default": {}, "s3v4": {"signature_version": "s3v4"}}


def presigner(srv, style):
    return s3(srv.endpoint, READER, **PRESIGN[style])


@pytest.mark.parametrize("style", list(PRESIGN))
def test_presigned_url_returns_the_object_without_credentials(srv, lake_a, style):
    key, data = next(iter(lake_a["lake-a"].items()))
    url = presigner(srv, style).generate_presigned_url("get_object", Params={"Bucket": "lake-a", "Key": key}, ExpiresIn=60)
    status, h, body = http_request(url)
    assert status == 200, f"{url}\n{status} {body[:600]!r}"
    assert body == data


@pytest.mark.parametrize("style", list(PRESIGN))
def test_expired_presigned_url_is_access_denied(srv, lake_a, style):
    key = next(iter(lake_a["lake-a"]))
    url = presigner(srv, style).generate_presigned_url("get_object", Params={"Bucket": "lake-a", "Key": key}, ExpiresIn=1)
    time.sleep(3)
    status, h, body = http_request(url)
    text = body.decode(errors="replace")
    assert status == 403, f"{url}\n{status} {text[:600]}"
    assert "<Code>AccessDenied</Code>" in text, text
    message = re.search(r"<Message>(.*?)</Message>", text, re.S)
    assert message and "expired" in message.group(1).lower(), text


@pytest.mark.parametrize("style", list(PRESIGN))
def test_presigned_url_pointed_at_another_key_is_signature_does_not_match(srv, lake_a, style):
    a = next(k for k in lake_a["lake-a"] if k.startswith("a/"))
    b = next(k for k in lake_a["lake-a"] if k.startswith("b/"))
    url = presigner(srv, style).generate_presigned_url("get_object", Params={"Bucket": "lake-a", "Key": a}, ExpiresIn=60)
    parts = urllib.parse.urlsplit(url)
    assert urllib.parse.unquote(parts.path) == "/lake-a/" + a, parts.path
    other = urllib.parse.urlunsplit(parts._replace(path="/lake-a/" + urllib.parse.quote(b, safe="/~")))
    status, h, body = http_request(other)
    text = body.decode(errors="replace")
    assert status == 403, f"{other}\n{status} {text[:600]}"
    assert "<Code>SignatureDoesNotMatch</Code>" in text, text
    assert lake_a["lake-a"][b] not in body


def test_aws_cli_s3_ls_with_the_admin_key(srv, lake_a):
    p = run_aws(srv.endpoint, ADMIN, "s3", "ls", "s3://lake-a/", "--recursive")
    assert p.returncode == 0, show(p)
    listed = {line.split()[-1]: int(line.split()[-2]) for line in p.stdout.splitlines() if line.strip()}
    assert listed == {k: len(v) for k, v in lake_a["lake-a"].items()}, p.stdout


# ---------------------------------------------------------------------------
# 3. hydrant's own endpoints


def test_ready_and_healthy_need_no_credentials(srv):
    for path in ("/-/ready", "/-/healthy"):
        status, _, body = http_request(srv.endpoint + path)
        assert status == 200, (path, status, body)


def test_metrics_need_the_bearer_token(srv):
    status, h, body = http_request(srv.endpoint + "/-/metrics")
    assert status == 401, (status, body[:300])
    status, h, body = http_request(srv.endpoint + "/-/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert status == 401, (status, body[:300])
    status, h, body = http_request(srv.endpoint + "/-/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status == 200, (status, body[:300])
    assert h.get("Content-Type", "").startswith("text/plain"), h.get("Content-Type")
    text = body.decode()
    assert re.search(r"^# TYPE \w+ (counter|gauge|histogram|summary)$", text, re.M), text[:600]
    assert re.search(r"^\w+(\{[^}]*\})? [-+0-9.eE]+$", text, re.M), text[:600]


def test_own_api_without_a_session_is_401_json(srv):
    for path in ("/-/streams", "/-/api/aggregates"):
        status, h, body = http_request(srv.endpoint + path)
        assert status == 401, (path, status, body[:300])
        doc = json_body(body)
        assert isinstance(doc.get("error"), str) and doc["error"], doc
    status, h, body = http_request(srv.endpoint + "/-/query", "POST", {"Content-Type": "text/plain"}, b"select 1")
    assert status == 401, (status, body[:300])


def test_login_refuses_a_wrong_secret_and_an_unknown_key(srv):
    for key in [(ADMIN[0], "not-the-admin-secret-000"), UNKNOWN]:
        status, h, body = login(srv.endpoint, key)
        assert status == 401, (key[0], status, body)
        assert "hydrant_session" not in (h.get("Set-Cookie") or ""), h.get_all("Set-Cookie")
        assert isinstance(json_body(body).get("error"), str)


def test_login_sets_an_httponly_samesite_strict_session_cookie(srv):
    status, h, body = login(srv.endpoint, ADMIN)
    assert status == 200, (status, body)
    cookie = h.get("Set-Cookie") or ""
    assert re.match(r"hydrant_session=[^;\s]{16,}", cookie), cookie
    attrs = [a.strip().lower() for a in cookie.split(";")[1:]]
    assert "httponly" in attrs, cookie
    assert "samesite=strict" in attrs, cookie
    # Plain HTTP: a Secure cookie would never be sent back.
    assert "secure" not in attrs, cookie


def test_sessions_see_what_their_keys_may_read(srv):
    all_streams = set(firehose(srv.endpoint, ADMIN).list_delivery_streams()["DeliveryStreamNames"])
    assert {"events-1", "events-s3a", "other"} <= all_streams

    def streams(key):
        status, h, body = http_request(srv.endpoint + "/-/streams", headers={"Cookie": session_cookie(srv.endpoint, key)})
        return status, body

    status, body = streams(ADMIN)
    assert status == 200, (status, body[:300])
    assert {s["name"] for s in json_body(body)["streams"]} == all_streams

    status, body = streams(READER)  # hydrant:Read, streams default *
    assert status == 200, (status, body[:300])
    assert {s["name"] for s in json_body(body)["streams"]} == all_streams

    status, body = streams(WATCHER)  # hydrant:Read on events-* only
    assert status == 200, (status, body[:300])
    assert {s["name"] for s in json_body(body)["streams"]} == {n for n in all_streams if n.startswith("events-")}

    status, body = streams(PRODUCER)  # no hydrant:Read
    assert status == 403, (status, body[:300])
    assert isinstance(json_body(body).get("error"), str)


def test_aggregates_show_only_streams_the_key_may_read(srv):
    def sources(key):
        status, h, body = http_request(srv.endpoint + "/-/api/aggregates", headers={"Cookie": session_cookie(srv.endpoint, key)})
        assert status == 200, (status, body[:300])
        return sorted(a["stream"] for a in json_body(body)["aggregates"])

    assert sources(ADMIN) == ["events-1", "other"]
    assert sources(WATCHER) == ["events-1"]  # hydrant:Read on events-* only


def test_query_with_a_session_needs_hydrants_own_origin(srv):
    cookie = session_cookie(srv.endpoint, ADMIN)
    url = srv.endpoint + "/-/query"
    status, h, body = http_request(url, "POST", {"Cookie": cookie, "Content-Type": "text/plain", "Origin": "http://evil.example"}, b"select 1")
    assert status == 403, (status, body[:300])
    status, h, body = http_request(url, "POST", {"Cookie": cookie, "Content-Type": "text/plain", "Origin": f"http://127.0.0.1:{srv.port}"}, b"select 1")
    assert status == 200, (status, body[:300])
    assert json_body(body)["rows"] == [[1]], body


def test_hydrant_query_cli_signs_with_the_environments_key(srv):
    p = run_query(srv.endpoint, ADMIN, "select 1 as x")
    assert p.returncode == 0, show(p)
    out = json.loads(p.stdout)
    assert out["rows"] == [[1]], p.stdout
    assert [c["name"] if isinstance(c, dict) else c for c in out["columns"]] == ["x"], p.stdout

    p = run_query(srv.endpoint, READER, "select 1 as x")  # no hydrant:Query
    assert p.returncode != 0, show(p)
    assert re.search(r"403|denied|may not|hydrant:Query|forbidden", p.stderr, re.I), show(p)

    p = run_query(srv.endpoint, (ADMIN[0], "not-the-admin-secret-000"), "select 1 as x")
    assert p.returncode != 0, show(p)


def test_server_survived_the_module(srv):
    alive(srv)
    status, _, _ = http_request(srv.endpoint + "/-/healthy")
    assert status == 200


# ---------------------------------------------------------------------------
# 4. Beyond loopback


def test_keys_let_hydrant_listen_on_every_interface_without_a_flag(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    server = AuthServer(data, json.dumps({"auth": keys_config()}), listen_host="0.0.0.0", env={"PRODUCER_SECRET": PRODUCER[1]})
    try:
        server.start()
        status, _, body = http_request(f"http://127.0.0.1:{server.port}/-/ready")
        assert status == 200, (status, body)
        # And it is not open: an unsigned call is refused, a signed one works.
        code, msg = error_code(lambda: firehose(server.endpoint, ADMIN, config={"signature_version": botocore.UNSIGNED}).list_delivery_streams())
        assert code == "MissingAuthenticationTokenException", (code, msg)
        assert firehose(server.endpoint, ADMIN).list_delivery_streams()["DeliveryStreamNames"] == []
    finally:
        stop(server)


# ---------------------------------------------------------------------------
# 5. TLS


OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def make_pki(d: Path):
    """A CA and a server certificate for 127.0.0.1 / localhost, signed by it."""
    def run(*args):
        p = subprocess.run([OPENSSL, *args], cwd=d, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, f"openssl {' '.join(args)}\n{p.stderr}"

    (d / "ca.cnf").write_text(
        "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=hydrant test CA\n"
        "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n"
    )
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
        "-config", "ca.cnf", "-extensions", "v3_ca")
    run("req", *ec, "-keyout", "server-key.pem", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return d / "ca.pem", d / "server.pem", d / "server-key.pem"


@pytest.fixture(scope="module")
def tls_srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    pki = root / "pki"
    pki.mkdir()
    ca, cert, key = make_pki(pki)
    data = root / "data"
    data.mkdir()
    config = json.dumps({
        "auth": keys_config(),
        "tls": {"cert_file": str(cert), "key_file": str(key)},
        "delivery_streams": [stream_config(name="tls-declared", bucket="lake-tls-d")],
    })
    server = AuthServer(data, config, ca=ca, env={"PRODUCER_SECRET": PRODUCER[1]})
    try:
        yield server.start()
    finally:
        stop(server)


def test_tls_boto3_trusting_the_ca_creates_puts_and_describes(tls_srv):
    c = firehose(tls_srv.endpoint, ADMIN, verify=str(tls_srv.ca))
    c.create_delivery_stream(**stream_config(name="tls-s", bucket="lake-tls", prefix="t/"))
    d = wait_for(lambda: (lambda x: x if x["DeliveryStreamStatus"] == "ACTIVE" else None)(
        c.describe_delivery_stream(DeliveryStreamName="tls-s")["DeliveryStreamDescription"]),
        timeout=30, what="tls-s to be ACTIVE")
    assert d["DeliveryStreamName"] == "tls-s"
    assert c.put_record(DeliveryStreamName="tls-s", Record={"Data": b"over-tls"})["RecordId"]
    wait_for(lambda: lines_in(tls_srv, "lake-tls") == [b"over-tls"], timeout=DELIVERY_DEADLINE,
             what="the record put over TLS in lake-tls")
    # Signatures are checked over TLS as well.
    code, msg = error_code(lambda: firehose(tls_srv.endpoint, (ADMIN[0], "not-the-admin-secret-000"),
                                            verify=str(tls_srv.ca)).list_delivery_streams())
    assert code == "InvalidSignatureException", (code, msg)


def test_tls_aws_cli_with_the_ca_bundle_lists_streams(tls_srv):
    p = run_aws(tls_srv.endpoint, ADMIN, "firehose", "list-delivery-streams",
                extra=["--ca-bundle", str(tls_srv.ca), "--output", "json"])
    assert p.returncode == 0, show(p)
    assert "tls-declared" in json.loads(p.stdout)["DeliveryStreamNames"], p.stdout


def test_tls_plain_http_to_the_port_gets_no_answer(tls_srv):
    try:
        status, _, body = http_request(f"http://127.0.0.1:{tls_srv.port}/-/ready", timeout=30)
    except (OSError, http.client.HTTPException) as e:
        status, body = None, repr(e)
    assert status != 200, (status, body)
    # hydrant is still serving HTTPS afterwards.
    alive(tls_srv)
    status, _, _ = http_request(f"{tls_srv.endpoint}/-/ready", context=tls_srv.ssl_context())
    assert status == 200


def test_tls_clients_that_do_not_trust_the_ca_fail(tls_srv):
    with pytest.raises(urllib.error.URLError) as e:
        http_request(f"{tls_srv.endpoint}/-/ready", context=ssl.create_default_context())
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError), repr(e.value)

    with pytest.raises(botocore.exceptions.SSLError):
        firehose(tls_srv.endpoint, ADMIN).list_delivery_streams()


def test_tls_login_cookie_is_secure(tls_srv):
    status, h, body = login(tls_srv.endpoint, ADMIN, context=tls_srv.ssl_context())
    assert status == 200, (status, body)
    attrs = [a.strip().lower() for a in (h.get("Set-Cookie") or "").split(";")[1:]]
    assert {"secure", "httponly", "samesite=strict"} <= set(attrs), h.get("Set-Cookie")


def test_a_snapshot_request_needs_its_own_action_and_origin(srv):
    url = srv.endpoint + "/-/streams/events-1/snapshot"
    status, h, body = http_request(url, "POST")
    assert status == 401, (status, body[:300])
    origin = {"Origin": f"http://127.0.0.1:{srv.port}"}
    status, h, body = http_request(url, "POST", {"Cookie": session_cookie(srv.endpoint, READER), **origin})
    assert status == 403, (status, body[:300])  # hydrant:Read, not hydrant:Snapshot
    admin = session_cookie(srv.endpoint, ADMIN)
    status, h, body = http_request(url, "POST", {"Cookie": admin, "Origin": "http://evil.example"})
    assert status == 403, (status, body[:300])
    # Allowed, but a DirectPut stream has no source to snapshot.
    status, h, body = http_request(url, "POST", {"Cookie": admin, **origin})
    assert status == 409 and "not of type DatabaseAsSource" in json_body(body)["error"], (status, body[:300])
    status, h, body = http_request(srv.endpoint + "/-/streams/nope/snapshot", "POST", {"Cookie": admin, **origin})
    assert status == 404, (status, body[:300])
