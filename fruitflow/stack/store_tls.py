"""Mutual TLS on the store's gRPC ports: SeaweedFS's master, volume server, filer and S3 gateway talk to
each other over gRPC, which takes no other authentication. Without it, anything that reaches a gRPC port
(a process on the machine, a container on compose's network) lists, reads and deletes every bucket with
`weed shell`, whatever the S3 identities say.

Each start of the store gets a CA of its own and one certificate it signs, for every component as server
and as client, accepted by common name only (`[grpc.*]` of SeaweedFS's security.toml, given as
`WEED_GRPC_*` variables). Its private key is written with mode 0600 into the store's folder and is read
by the store alone: nothing else of the pipeline speaks gRPC to it.

    python -m fruitflow.stack.store_tls FOLDER    # what compose's `seaweedfs-tls-init` runs before the store
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from fruitflow.stack.process import write_private

# security.toml's [grpc.<component>] sections (SeaweedFS 4.x): every server the store may start, and
# `client`, which each uses to dial the others
COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "mq", "msg_broker", "msg_agent", "client")
COMMON_NAME = "fruitflow-store"
FILES = {"ca": "ca.crt", "cert": "store.crt", "key": "store.key"}
VALID_FOR = dt.timedelta(days=365)


def environment(folder: Path) -> dict[str, str]:
    """The `WEED_GRPC_*` settings that point SeaweedFS at the files `issue` writes into `folder`."""
    ca, cert, key = (str(folder / FILES[name]) for name in ("ca", "cert", "key"))
    env = {"WEED_GRPC_CA": ca}
    for component in COMPONENTS:
        prefix = f"WEED_GRPC_{component.upper()}_"
        env |= {f"{prefix}CERT": cert, f"{prefix}KEY": key}
        if component != "client":
            env[f"{prefix}ALLOWED_COMMONNAMES"] = COMMON_NAME
    return env


def issue(folder: Path) -> dict[str, str]:
    """A new CA and the store's certificate in `folder` (the CA's key is never written: nothing else is
    ever signed with it); the environment that uses them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def certificate(subject: str, public_key, issuer: str, signing_key, *extensions):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALID_FOR))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate(f"{COMMON_NAME} CA", ca_key.public_key(), f"{COMMON_NAME} CA", ca_key,
                     (x509.BasicConstraints(ca=True, path_length=0), True))
    # SeaweedFS checks the chain and the common name, not the host name: one certificate serves any address
    leaf = certificate(COMMON_NAME, key.public_key(), f"{COMMON_NAME} CA", ca_key,
                       (x509.BasicConstraints(ca=False, path_length=None), True),
                       (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                        False),
                       (x509.SubjectAlternativeName([x509.DNSName(COMMON_NAME)]), False))
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = serialization.Encoding.PEM
    write_private(folder / FILES["key"], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()).decode())
    (folder / FILES["cert"]).write_bytes(leaf.public_bytes(pem))
    (folder / FILES["ca"]).write_bytes(ca.public_bytes(pem))
    return environment(folder)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    issue(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
