"""RedshiftDestinationConfiguration through the Firehose API, as boto3 and
the AWS CLI see it, against a real hydrant process: create, describe, list,
delete; the config file's streams and secrets; and every request hydrant
must refuse, each refused by name. The password given is never in any
response.

Loading into PostgreSQL is test_warehouse_load.py's; here only the secrets
test loads (to show that the secret's user is the one that connects).
"""

import copy
import http.client
import json
import secrets
import subprocess
import urllib.request

import botocore.exceptions
import pytest

from conftest import AWS, aws_env, wait_for
from pg import JDBC_URL, ROLE, count, redshift_config, rows, warehouse  # noqa: F401  (warehouse is a fixture)

SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:warehouse-AbCdEf"
TARGET = "Firehose_20150804."


# --- helpers -----------------------------------------------------------------


def new_password() -> str:
    """A password no response could contain by chance."""
    return f"pw-{secrets.token_hex(12)}"


def create(client, name, cfg):
    return client.create_delivery_stream(DeliveryStreamName=name, DeliveryStreamType="DirectPut", RedshiftDestinationConfiguration=cfg)


def described(client, name) -> dict:
    """The Redshift destination as boto3 parses DescribeDeliveryStream."""
    d = client.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
    assert len(d["Destinations"]) == 1, d["Destinations"]
    dest = d["Destinations"][0]
    assert dest["DestinationId"]
    assert "RedshiftDestinationDescription" in dest, f"no RedshiftDestinationDescription in {dest}"
    return dest["RedshiftDestinationDescription"]


def raw_call(server, action, body) -> tuple[int, bytes]:
    """A Firehose action over plain HTTP: (status, the response body's exact bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/",
            body=json.dumps(body).encode(),
            headers={"X-Amz-Target": TARGET + action, "Content-Type": "application/x-amz-json-1.1"},
        )
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def get(server, path) -> bytes:
    with urllib.request.urlopen(server.endpoint + path, timeout=30) as r:
        assert r.status == 200
        return r.read()


def assert_never_echoed(server, name, password):
    """The password is in no response about the stream: Describe, List, /-/streams,
    /-/metrics; nor in hydrant's log."""
    status, body = raw_call(server, "DescribeDeliveryStream", {"DeliveryStreamName": name})
    assert status == 200, body
    assert password.encode() not in body, f"DescribeDeliveryStream echoes the password: {body!r}"
    assert b'"Password"' not in body, f"DescribeDeliveryStream has a Password field: {body!r}"
    status, body = raw_call(server, "ListDeliveryStreams", {})
    assert status == 200, body
    assert password.encode() not in body
    for path in ("/-/streams", "/-/metrics"):
        assert password.encode() not in get(server, path), f"{path} shows the password"
    assert password not in server.log(), "hydrant's log shows the password"


def names(client) -> list[str]:
    return client.list_delivery_streams()["DeliveryStreamNames"]


def error_of(exc) -> tuple[str, str]:
    err = exc.response["Error"]
    return err["Code"], err.get("Message", "")


def aws(server, *args):
    return subprocess.run(
        [str(AWS), "--endpoint-url", server.endpoint, "--region", "eu-west-1", "--output", "json", "firehose", *args],
        capture_output=True,
        text=True,
        env=aws_env(),
        timeout=60,
    )


def ok(p) -> dict:
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return json.loads(p.stdout) if p.stdout.strip() else {}


def streams_entry(server, name) -> dict:
    for s in json.loads(get(server, "/-/streams"))["streams"]:
        if s["name"] == name:
            return s
    raise AssertionError(f"stream {name} not in /-/streams")


@pytest.fixture(scope="module", autouse=True)
def cli_present():
    assert AWS.exists(), f"the AWS CLI is not installed at {AWS}"


# --- create, describe, list, delete ------------------------------------------


def test_boto3_create_describe_list_delete(server):
    """A stream made with every RedshiftDestinationConfiguration field hydrant takes is
    ACTIVE, listed, and described with each field as it was set (the staging bucket as
    S3DestinationDescription, the backup as S3BackupDescription); the password is in no
    response. Deleting it unlists it."""
    c = server.client()
    password = new_password()
    cfg = redshift_config(
        "public.orders_api",
        options="JSON 'auto ignorecase' TIMEFORMAT 'epochmillisecs' MAXERROR 5",
        columns="id,amount,ts",
        bucket="staging-api",
        prefix="orders/",
        size_mb=2,
        interval=30,
        password=password,
        RetryOptions={"DurationInSeconds": 600},
        S3BackupMode="Enabled",
        S3BackupConfiguration={
            "RoleARN": ROLE,
            "BucketARN": "arn:aws:s3:::backup-api",
            "Prefix": "backup/",
            "CompressionFormat": "GZIP",
        },
    )
    arn = create(c, "orders-api", cfg)["DeliveryStreamARN"]
    assert arn.endswith(":deliverystream/orders-api"), arn

    d = c.describe_delivery_stream(DeliveryStreamName="orders-api")["DeliveryStreamDescription"]
    assert d["DeliveryStreamARN"] == arn
    assert d["DeliveryStreamStatus"] == "ACTIVE"
    assert d["DeliveryStreamType"] == "DirectPut"
    r = described(c, "orders-api")
    assert r["RoleARN"] == ROLE
    assert r["ClusterJDBCURL"] == JDBC_URL
    assert r["CopyCommand"] == {
        "DataTableName": "public.orders_api",
        "DataTableColumns": "id,amount,ts",
        "CopyOptions": "JSON 'auto ignorecase' TIMEFORMAT 'epochmillisecs' MAXERROR 5",
    }
    assert r["Username"] == "postgres"
    assert "Password" not in r
    assert r["RetryOptions"] == {"DurationInSeconds": 600}
    s3 = r["S3DestinationDescription"]
    assert s3["RoleARN"] == ROLE
    assert s3["BucketARN"] == "arn:aws:s3:::staging-api"
    assert s3["Prefix"] == "orders/"
    assert s3["ErrorOutputPrefix"] == "errors/!{firehose:error-output-type}/"
    assert s3["BufferingHints"] == {"SizeInMBs": 2, "IntervalInSeconds": 30}
    assert s3["CompressionFormat"] == "UNCOMPRESSED"
    assert r["S3BackupMode"] == "Enabled"
    backup = r["S3BackupDescription"]
    assert backup["BucketARN"] == "arn:aws:s3:::backup-api"
    assert backup["Prefix"] == "backup/"
    assert backup["CompressionFormat"] == "GZIP"
    assert r["ProcessingConfiguration"] == {"Enabled": True, "Processors": [{"Type": "AppendDelimiterToRecord"}]}
    assert "SecretsManagerConfiguration" not in r or r["SecretsManagerConfiguration"].get("Enabled") is False

    assert names(c) == ["orders-api"]
    assert_never_echoed(server, "orders-api", password)

    c.delete_delivery_stream(DeliveryStreamName="orders-api")
    wait_for(lambda: names(c) == [], timeout=60, what="the deleted stream to leave the list")
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.describe_delivery_stream(DeliveryStreamName="orders-api")


def test_defaults_are_described(server):
    """With no RetryOptions, S3BackupMode or ProcessingConfiguration, Describe shows
    Firehose's defaults: 3600 s of retries, backup Disabled; a bare table name and a
    jdbc:redshift URL are echoed as given."""
    c = server.client()
    url = "jdbc:redshift://examplecluster.abc123.us-east-1.redshift.amazonaws.com:5439/dev"
    cfg = redshift_config("orders", url=url, options="CSV", delimiter=False, error_prefix=None)
    create(c, "plain", cfg)
    r = described(c, "plain")
    assert r["ClusterJDBCURL"] == url
    assert r["CopyCommand"]["DataTableName"] == "orders"
    assert r["CopyCommand"]["CopyOptions"] == "CSV"
    assert r["RetryOptions"] == {"DurationInSeconds": 3600}
    assert r["S3BackupMode"] == "Disabled"
    assert "S3BackupDescription" not in r


@pytest.mark.parametrize("seconds", [0, 7200])
def test_retry_duration_bounds_are_accepted(server, seconds):
    """RetryOptions.DurationInSeconds takes 0 and 7200, Firehose's bounds."""
    c = server.client()
    create(c, "bounds", redshift_config("orders", RetryOptions={"DurationInSeconds": seconds}))
    assert described(c, "bounds")["RetryOptions"] == {"DurationInSeconds": seconds}


def test_a_redshift_stream_survives_a_restart(server):
    """After a clean restart the stream is described exactly as before (its stored
    definition keeps everything, and still shows no password)."""
    c = server.client()
    password = new_password()
    cfg = redshift_config("public.kept", options="JSON 'auto' GZIP", compression="GZIP", password=password, RetryOptions={"DurationInSeconds": 60})
    create(c, "kept", cfg)
    before = c.describe_delivery_stream(DeliveryStreamName="kept")["DeliveryStreamDescription"]
    assert server.stop() == 0
    server.start()
    c = server.client()
    after = c.describe_delivery_stream(DeliveryStreamName="kept")["DeliveryStreamDescription"]
    for d in (before, after):
        d.pop("LastUpdateTimestamp", None)
        # The table does not exist: whether loading has said so yet is
        # state, not definition.
        failure = d.pop("FailureDescription", None)
        assert failure is None or "public.kept" in failure["Details"], failure
    assert after == before
    assert_never_echoed(server, "kept", password)


def test_cli_create_describe_list_delete(server, tmp_path):
    """aws firehose create-delivery-stream --redshift-destination-configuration file://...
    prints the ARN; describe-delivery-stream shows the destination as given, without the
    password; list-delivery-streams lists it; delete-delivery-stream removes it."""
    password = new_password()
    cfg = redshift_config(
        "public.cli_orders",
        options="CSV DELIMITER ';' IGNOREHEADER 1",
        columns="id, amount",
        bucket="cli-staging",
        prefix="cli/",
        password=password,
        RetryOptions={"DurationInSeconds": 120},
    )
    path = tmp_path / "redshift.json"
    path.write_text(json.dumps(cfg))
    created = ok(
        aws(
            server,
            "create-delivery-stream",
            "--delivery-stream-name", "cli-orders",
            "--delivery-stream-type", "DirectPut",
            "--redshift-destination-configuration", f"file://{path}",
        )
    )
    assert created["DeliveryStreamARN"].endswith(":deliverystream/cli-orders")

    p = aws(server, "describe-delivery-stream", "--delivery-stream-name", "cli-orders")
    assert password not in p.stdout + p.stderr
    d = ok(p)["DeliveryStreamDescription"]
    assert d["DeliveryStreamStatus"] == "ACTIVE"
    r = d["Destinations"][0]["RedshiftDestinationDescription"]
    assert r["ClusterJDBCURL"] == JDBC_URL
    assert r["CopyCommand"] == {"DataTableName": "public.cli_orders", "DataTableColumns": "id, amount", "CopyOptions": "CSV DELIMITER ';' IGNOREHEADER 1"}
    assert r["Username"] == "postgres"
    assert r["RetryOptions"] == {"DurationInSeconds": 120}
    assert r["S3DestinationDescription"]["BucketARN"] == "arn:aws:s3:::cli-staging"
    assert r["S3DestinationDescription"]["Prefix"] == "cli/"

    p = aws(server, "list-delivery-streams")
    assert password not in p.stdout
    assert ok(p)["DeliveryStreamNames"] == ["cli-orders"]

    ok(aws(server, "delete-delivery-stream", "--delivery-stream-name", "cli-orders"))
    wait_for(lambda: ok(aws(server, "list-delivery-streams"))["DeliveryStreamNames"] == [], timeout=60, what="the stream to be deleted")
    p = aws(server, "describe-delivery-stream", "--delivery-stream-name", "cli-orders")
    assert p.returncode in (254, 255) and "ResourceNotFoundException" in p.stderr, p.stderr


def test_cli_refused_option_names_it(server):
    """The AWS CLI with inline JSON: CopyOptions with MANIFEST exits non-zero with
    InvalidArgumentException naming MANIFEST, and creates nothing."""
    cfg = redshift_config("public.cli_orders", options="JSON 'auto' MANIFEST")
    p = aws(
        server,
        "create-delivery-stream",
        "--delivery-stream-name", "cli-refused",
        "--redshift-destination-configuration", json.dumps(cfg),
    )
    assert p.returncode in (254, 255), f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert "InvalidArgumentException" in p.stderr, p.stderr
    assert "MANIFEST" in p.stderr, p.stderr
    assert ok(aws(server, "list-delivery-streams"))["DeliveryStreamNames"] == []


# --- refusals ----------------------------------------------------------------

REFUSED_COPY_OPTIONS = [
    ("JSON 'auto' MANIFEST", "MANIFEST"),
    ("json 'auto' manifest", "MANIFEST"),
    ("JSON 'auto' IAM_ROLE 'arn:aws:iam::123456789012:role/r'", "IAM_ROLE"),
    ("JSON 'auto' REGION 'us-east-1'", "REGION"),
    ("JSON 'auto' NOLOAD", "NOLOAD"),
    ("CSV FILLRECORD", "FILLRECORD"),
    ("JSON 'auto' CREDENTIALS 'aws_access_key_id=x;aws_secret_access_key=y'", "CREDENTIALS"),
    ("JSON 'auto' ENCRYPTED", "ENCRYPTED"),
    ("JSON 'auto' COMPUPDATE OFF", "COMPUPDATE"),
    ("JSON 'auto' STATUPDATE ON", "STATUPDATE"),
    ("JSON 'auto' EXPLICIT_IDS", "EXPLICIT_IDS"),
    ("JSON 'auto' ACCEPTANYDATE", "ACCEPTANYDATE"),
    ("JSON 'auto' ROUNDEC", "ROUNDEC"),
    ("CSV TRIMBLANKS", "TRIMBLANKS"),
    ("DELIMITER '|' REMOVEQUOTES", "REMOVEQUOTES"),
    ("DELIMITER '|' ESCAPE", "ESCAPE"),
    ("CSV NULL AS 'none'", "NULL"),
    ("FIXEDWIDTH 'id:4,amount:8'", "FIXEDWIDTH"),
    ("FORMAT AS AVRO 'auto'", "AVRO"),
    ("FORMAT AS PARQUET", "PARQUET"),
    ("JSON 'auto' BZIP2", "BZIP2"),
    ("JSON 'auto' LZOP", "LZOP"),
    ("JSON 's3://bucket/jsonpaths.json'", "s3://bucket/jsonpaths.json"),
    ("JSON 'auto' MAXERROR 100001", "MAXERROR"),
    ("JSON 'auto' TIMEFORMAT 'YYYY-MM-DD QQ'", "TIMEFORMAT"),
    ("JSON 'auto' DELIMITER ','", "DELIMITER"),
    ("JSON 'auto'; DROP TABLE orders", ";"),
]


@pytest.mark.parametrize("options,culprit", REFUSED_COPY_OPTIONS, ids=[o for o, _ in REFUSED_COPY_OPTIONS])
def test_copy_options_hydrant_does_not_do_are_refused_by_name(server, options, culprit):
    """CopyOptions outside what hydrant's loader does are refused at create time with
    InvalidArgumentException naming the option; no stream is created."""
    c = server.client()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        create(c, "refused", redshift_config("public.orders", options=options))
    code, message = error_of(e.value)
    assert code == "InvalidArgumentException", e.value.response["Error"]
    assert culprit.lower() in message.lower(), f"{message!r} does not name {culprit!r}"
    assert "CopyOptions" in message, message
    assert names(c) == []


def _set(**fields):
    def mutate(cfg):
        cfg.update(fields)
        return cfg

    return mutate


def _staging(**fields):
    def mutate(cfg):
        cfg["S3Configuration"].update(fields)
        return cfg

    return mutate


def _drop(*keys):
    def mutate(cfg):
        for k in keys:
            cfg.pop(k, None)
        return cfg

    return mutate


def _copy(**fields):
    def mutate(cfg):
        cfg["CopyCommand"].update(fields)
        return cfg

    return mutate


def _processors(*processors):
    return _set(ProcessingConfiguration={"Enabled": True, "Processors": list(processors)})


# (id, mutation of a good request, expected error code, texts any one of which names the culprit)
REFUSED = [
    ("url-mysql", _set(ClusterJDBCURL="jdbc:mysql://127.0.0.1:3306/test"), "InvalidArgumentException", ["jdbc:mysql"]),
    ("url-port-99999", _set(ClusterJDBCURL="jdbc:postgresql://127.0.0.1:99999/test"), "InvalidArgumentException", ["99999"]),
    ("url-port-0", _set(ClusterJDBCURL="jdbc:postgresql://127.0.0.1:0/test"), "InvalidArgumentException", ["port"]),
    ("url-sslmode-require", _set(ClusterJDBCURL="jdbc:postgresql://127.0.0.1:5432/test?sslmode=require"), "InvalidArgumentException", ["sslmode"]),
    ("url-unknown-parameter", _set(ClusterJDBCURL="jdbc:postgresql://127.0.0.1:5432/test?ssl=true"), "InvalidArgumentException", ["ssl"]),
    ("url-no-database", _set(ClusterJDBCURL="jdbc:postgresql://127.0.0.1:5432"), "InvalidArgumentException", ["database"]),
    ("url-empty-database", _set(ClusterJDBCURL="jdbc:postgresql://127.0.0.1:5432/"), "InvalidArgumentException", ["database"]),
    ("url-credentials-inside", _set(ClusterJDBCURL="jdbc:postgresql://postgres:hunter22@127.0.0.1:5432/test"), "InvalidArgumentException", ["Username"]),
    ("retry-minus-1", _set(RetryOptions={"DurationInSeconds": -1}), "ValidationException", ["DurationInSeconds"]),
    ("retry-7201", _set(RetryOptions={"DurationInSeconds": 7201}), "ValidationException", ["DurationInSeconds"]),
    ("no-username-no-password", _drop("Username", "Password"), "InvalidArgumentException", ["Username", "SecretsManagerConfiguration"]),
    ("no-password", _drop("Password"), "InvalidArgumentException", ["Password"]),
    ("no-username", _drop("Username"), "InvalidArgumentException", ["Username"]),
    ("gzip-staging-plain-copy", _staging(CompressionFormat="GZIP"), "InvalidArgumentException", ["GZIP"]),
    ("plain-staging-gzip-copy", _copy(CopyOptions="JSON 'auto' GZIP"), "InvalidArgumentException", ["GZIP"]),
    ("zstd-staging-gzip-copy", lambda c: _copy(CopyOptions="JSON 'auto' GZIP")(_staging(CompressionFormat="ZSTD")(c)), "InvalidArgumentException", ["ZSTD"]),
    ("snappy-staging", _staging(CompressionFormat="Snappy"), "InvalidArgumentException", ["Snappy"]),
    ("zip-staging", _staging(CompressionFormat="ZIP"), "InvalidArgumentException", ["ZIP"]),
    ("unknown-secret", lambda c: _set(SecretsManagerConfiguration={"Enabled": True, "SecretARN": SECRET_ARN})(_drop("Username", "Password")(c)), "InvalidArgumentException", [SECRET_ARN]),
    ("metadata-extraction", _processors({"Type": "MetadataExtraction", "Parameters": [
        {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{region: .region}"},
        {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"},
    ]}), "InvalidArgumentException", ["MetadataExtraction"]),
    ("lambda-processor", _processors({"Type": "Lambda", "Parameters": [
        {"ParameterName": "LambdaArn", "ParameterValue": "arn:aws:lambda:us-east-1:123456789012:function:f"},
    ]}), "InvalidArgumentException", ["Lambda"]),
    ("table-name-injection", _copy(DataTableName='orders"; DROP TABLE orders; --'), "InvalidArgumentException", ["DataTableName"]),
    ("column-name-injection", _copy(DataTableColumns='id, "amount"); DROP TABLE orders; --'), "InvalidArgumentException", ["DataTableColumns"]),
    ("no-table", lambda c: (c["CopyCommand"].pop("DataTableName"), c)[1], "ValidationException", ["DataTableName"]),
]


@pytest.mark.parametrize("mutate,code,culprits", [(m, c, n) for _, m, c, n in REFUSED], ids=[i for i, *_ in REFUSED])
def test_malformed_destination_is_refused_by_name(server, mutate, code, culprits):
    """A request hydrant cannot honour (a bad JDBC URL, retries out of range, no
    credentials, staging compression COPY cannot read or that CopyOptions does not
    declare, an unknown secret, a processor other than AppendDelimiterToRecord, a table or
    column list that is not names) is refused with an error naming the culprit, and no
    stream is created. boto3's own checks are off so the server is what refuses."""
    c = server.client(parameter_validation=False)
    cfg = mutate(copy.deepcopy(redshift_config("public.orders", password="secret-pw-1")))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        create(c, "refused", cfg)
    got, message = error_of(e.value)
    assert got == code, e.value.response["Error"]
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert any(n.lower() in message.lower() for n in culprits), f"{message!r} names none of {culprits}"
    assert "hunter22" not in message and "secret-pw-1" not in message, f"the error echoes a password: {message!r}"
    assert names(c) == []


# --- the config file ---------------------------------------------------------


def config_stream_yaml(name, table, password, extra="") -> str:
    return f"""\
delivery_streams:
  - DeliveryStreamName: {name}
    DeliveryStreamType: DirectPut
    RedshiftDestinationConfiguration:
      RoleARN: {ROLE}
      ClusterJDBCURL: "{JDBC_URL}?connectTimeout=5&ApplicationName=hydrant-tests"
      Username: postgres
      Password: "{password}"
      CopyCommand:
        DataTableName: {table}
        DataTableColumns: "id,amount,ts"
        CopyOptions: "JSON 'auto' TIMEFORMAT 'epochsecs'"
      S3Configuration:
        RoleARN: {ROLE}
        BucketARN: arn:aws:s3:::staging-cfg
        Prefix: cfg/
        ErrorOutputPrefix: "errors/!{{firehose:error-output-type}}/"
        BufferingHints: {{SizeInMBs: 1, IntervalInSeconds: 1}}
        CompressionFormat: UNCOMPRESSED
      RetryOptions: {{DurationInSeconds: 900}}
      S3BackupMode: Disabled
      ProcessingConfiguration:
        Enabled: true
        Processors:
          - Type: AppendDelimiterToRecord
{extra}"""


def test_stream_declared_in_the_config_file(make_server):
    """A Redshift stream written in the config file exactly as the API request is listed
    and described as declared, without its password, and again after a restart."""
    password = new_password()
    server = make_server(config_stream_yaml("cfg-orders", "public.cfg_orders", password))
    c = server.client()
    assert names(c) == ["cfg-orders"]
    for attempt in range(2):
        r = described(c, "cfg-orders")
        assert r["ClusterJDBCURL"] == f"{JDBC_URL}?connectTimeout=5&ApplicationName=hydrant-tests"
        assert r["CopyCommand"] == {"DataTableName": "public.cfg_orders", "DataTableColumns": "id,amount,ts", "CopyOptions": "JSON 'auto' TIMEFORMAT 'epochsecs'"}
        assert r["Username"] == "postgres"
        assert r["RetryOptions"] == {"DurationInSeconds": 900}
        assert r["S3BackupMode"] == "Disabled"
        s3 = r["S3DestinationDescription"]
        assert s3["BucketARN"] == "arn:aws:s3:::staging-cfg"
        assert s3["Prefix"] == "cfg/"
        assert s3["ErrorOutputPrefix"] == "errors/!{firehose:error-output-type}/"
        assert s3["BufferingHints"] == {"SizeInMBs": 1, "IntervalInSeconds": 1}
        assert r["ProcessingConfiguration"] == {"Enabled": True, "Processors": [{"Type": "AppendDelimiterToRecord"}]}
        assert_never_echoed(server, "cfg-orders", password)
        if attempt == 0:
            assert server.stop() == 0
            server.start()
            c = server.client()


@pytest.mark.parametrize(
    "mutation,culprit",
    [
        (("JSON 'auto' TIMEFORMAT 'epochsecs'", "JSON 'auto' MANIFEST"), "MANIFEST"),
        (("jdbc:postgresql://127.0.0.1:5432/test?connectTimeout=5", "jdbc:postgresql://127.0.0.1:5432/test?sslmode=verify-full&connectTimeout=5"), "sslmode"),
    ],
    ids=["manifest", "sslmode"],
)
def test_config_file_with_a_refused_stream_does_not_start(make_server, mutation, culprit):
    """hydrant will not start on a config file whose Redshift stream it would refuse
    through the API; what it prints names the culprit."""
    old, new = mutation
    text = config_stream_yaml("cfg-bad", "public.cfg_bad", "pw-123456")
    assert old in text
    with pytest.raises(RuntimeError) as e:
        make_server(text.replace(old, new))
    assert culprit in str(e.value), str(e.value)[-2000:]


# --- secrets -----------------------------------------------------------------


def secrets_yaml(entries: dict) -> str:
    lines = ["secrets:"]
    for arn, fields in entries.items():
        lines.append(f'  "{arn}":')
        lines += [f'    {k}: "{v}"' for k, v in fields.items()]
    return "\n".join(lines) + "\n"


def with_secret(cfg, arn):
    cfg = dict(cfg)
    cfg.pop("Username", None)
    cfg.pop("Password", None)
    cfg["SecretsManagerConfiguration"] = {"Enabled": True, "SecretARN": arn, "RoleARN": ROLE}
    return cfg


def test_secrets_manager_configuration_from_the_config_file(make_server, monkeypatch):
    """A stream whose credentials are a config-file secret (password from an environment
    variable of the server process) is created through boto3 and described with its
    SecretsManagerConfiguration; neither password nor secret value is ever echoed.
    Username and Password beside an enabled secret are refused."""
    env_password = new_password()
    file_password = new_password()
    var = f"HYDRANT_TEST_WAREHOUSE_PASSWORD_{secrets.token_hex(4).upper()}"
    monkeypatch.setenv(var, env_password)
    other_arn = SECRET_ARN.replace("warehouse-AbCdEf", "other-123456")
    config = secrets_yaml({SECRET_ARN: {"username": "postgres", "password_env": var}, other_arn: {"username": "loader", "password": file_password}})
    server = make_server(config)
    c = server.client()

    create(c, "via-secret", with_secret(redshift_config("public.via_secret"), SECRET_ARN))
    r = described(c, "via-secret")
    sm = r["SecretsManagerConfiguration"]
    assert sm["Enabled"] is True
    assert sm["SecretARN"] == SECRET_ARN
    assert_never_echoed(server, "via-secret", env_password)
    assert_never_echoed(server, "via-secret", file_password)

    c2 = server.client(parameter_validation=False)
    both = with_secret(redshift_config("public.via_secret"), other_arn)
    both.update(Username="postgres", Password="given-too")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        create(c2, "both", both)
    code, message = error_of(e.value)
    assert code == "InvalidArgumentException", e.value.response["Error"]
    assert "SecretsManagerConfiguration" in message, message
    assert names(c) == ["via-secret"]


def test_the_secrets_user_is_the_one_that_loads(warehouse, make_server, monkeypatch):
    """Loading connects as the secret's user: a secret whose username comes from an
    environment variable (postgres) loads its record; a secret naming a role that does
    not exist loads nothing, and the stream's last error names that role, not the
    password."""
    table = warehouse.table("via_secret", "id int, note text")
    good, bad = warehouse.stream("good-secret"), warehouse.stream("bad-secret")
    user_var = f"HYDRANT_TEST_WAREHOUSE_USER_{secrets.token_hex(4).upper()}"
    monkeypatch.setenv(user_var, "postgres")
    bad_role = f"no_such_role_{warehouse.suffix}"
    bad_password = new_password()
    good_arn = SECRET_ARN.replace("warehouse-AbCdEf", f"good-{warehouse.suffix}")
    bad_arn = SECRET_ARN.replace("warehouse-AbCdEf", f"bad-{warehouse.suffix}")
    server = make_server(secrets_yaml({good_arn: {"username_env": user_var, "password": "unused-by-trust"}, bad_arn: {"username": bad_role, "password": bad_password}}))
    c = server.client()
    create(c, good, with_secret(redshift_config(table, bucket="secret-staging", prefix="good/"), good_arn))
    create(c, bad, with_secret(redshift_config(table, bucket="secret-staging", prefix="bad/"), bad_arn))
    c.put_record(DeliveryStreamName=good, Record={"Data": json.dumps({"id": 1, "note": "from the good secret"})})
    c.put_record(DeliveryStreamName=bad, Record={"Data": json.dumps({"id": 2, "note": "from the bad secret"})})

    wait_for(lambda: count(table) >= 1, timeout=60, interval=0.25, what="the good secret's row")

    def bad_error():
        e = (streams_entry(server, bad).get("warehouse") or {}).get("last_error")
        return e.get("message") if isinstance(e, dict) else e

    message = wait_for(bad_error, timeout=60, what="the bad secret's stream to report its error")
    assert bad_role in message, message
    assert bad_password not in message
    assert rows(f"SELECT id, note FROM {table} ORDER BY id") == [{"id": 1, "note": "from the good secret"}]
    assert_never_echoed(server, bad, bad_password)


def test_a_secret_whose_variable_is_unset_stops_the_start(make_server):
    """A secret whose password_env names an environment variable that is not set:
    hydrant does not start, and says which variable."""
    var = f"HYDRANT_TEST_UNSET_{secrets.token_hex(4).upper()}"
    with pytest.raises(RuntimeError) as e:
        make_server(secrets_yaml({SECRET_ARN: {"username": "postgres", "password_env": var}}))
    assert var in str(e.value), str(e.value)[-2000:]
