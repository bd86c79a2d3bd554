"""A real hydrant process for each test, on a free loopback port.

`server` starts `hydrant serve` with a fresh data directory (and an optional
config file), waits for /-/ready, and stops it at the end of the test. Tests
drive it with real clients (boto3, the AWS CLI) and read what landed straight
from the lake directory.
"""

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import boto3
import botocore.config
import pytest

ROOT = Path(__file__).resolve().parents[2]


def hydrant_bin() -> str:
    if os.environ.get("HYDRANT_BIN"):
        return os.environ["HYDRANT_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "release" / "hydrant")


AWS = Path(__import__("sys").executable).parent / "aws"


def aws_env() -> dict:
    """The environment for the AWS CLI against a local server: any
    credentials, no config files, no retries, no pager."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="eu-west-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_MAX_ATTEMPTS="1",
        AWS_PAGER="",
        PYTHONIOENCODING="utf-8",
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One hydrant process. Restartable on the same data dir and port."""

    def __init__(self, data_dir: Path, config: str | None = None, port: int | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.config_path = None
        if config is not None:
            self.config_path = data_dir.parent / f"hydrant-{self.port}.yaml"
            self.config_path.write_text(config)
        self.proc = None
        self.log_path = data_dir.parent / f"hydrant-{self.port}.log"

    @property
    def lake(self) -> Path:
        return self.data_dir / "lake"

    def start(self, timeout: float = 20.0):
        args = [hydrant_bin(), "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir)]
        if self.config_path:
            args += ["--config", str(self.config_path)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "info"})
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hydrant exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"hydrant not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
        """Sends `sig` and waits; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self):
        self.stop(signal.SIGKILL)

    def client(self, **config):
        return boto3.client(
            "firehose",
            region_name="eu-west-1",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=botocore.config.Config(retries={"max_attempts": 0}, **config),
        )

    def objects(self, bucket: str) -> list[Path]:
        """Every object in a bucket of the embedded lake, sorted by key."""
        root = self.lake / bucket
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def keys(self, bucket: str) -> list[str]:
        root = self.lake / bucket
        return [str(p.relative_to(root)) for p in self.objects(bucket)]


@pytest.fixture
def make_server(tmp_path):
    """Factory: make_server(config=None) -> started Server. Stopped at teardown."""
    servers = []

    def make(config: str | None = None, start: bool = True, data_dir: Path | None = None) -> Server:
        d = data_dir or tmp_path / f"data{len(servers)}"
        d.mkdir(parents=True, exist_ok=True)
        s = Server(d, config)
        servers.append(s)
        return s.start() if start else s

    yield make
    for s in servers:
        if s.proc is not None and s.proc.poll() is None:
            s.kill()


@pytest.fixture
def server(make_server):
    return make_server()


def stream_config(name="s", bucket="test-bucket", prefix="events/", size_mb=1, interval=1, compression="UNCOMPRESSED", delimiter=True, **extra):
    """A CreateDeliveryStream request for the common case."""
    dest = {
        "RoleARN": "arn:aws:iam::123456789012:role/firehose",
        "BucketARN": f"arn:aws:s3:::{bucket}",
        "Prefix": prefix,
        "BufferingHints": {"SizeInMBs": size_mb, "IntervalInSeconds": interval},
        "CompressionFormat": compression,
    }
    if delimiter:
        dest["ProcessingConfiguration"] = {"Enabled": True, "Processors": [{"Type": "AppendDelimiterToRecord"}]}
    dest.update(extra)
    return {"DeliveryStreamName": name, "DeliveryStreamType": "DirectPut", "ExtendedS3DestinationConfiguration": dest}


def wait_for(predicate, timeout=15.0, interval=0.05, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def mount_tmpfs(path, size):
    """Mounts a tmpfs of `size` at `path` for a full-disk test; skips loudly
    where that is not possible, and fails when CI=true."""
    path.mkdir(parents=True, exist_ok=True)
    why = None
    if os.geteuid() != 0:
        why = "not running as root"
    else:
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
            if r.returncode != 0:
                why = f"mount -t tmpfs failed: {r.stderr.strip()}"
        except FileNotFoundError:
            why = "no mount command"
    if why:
        message = f"DISK-FULL TEST NOT RUN: needs to mount a small tmpfs ({why})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def unmount_tmpfs(path):
    """Unmounts what mount_tmpfs mounted, lazily if something still holds it."""
    r = subprocess.run(["umount", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
