"""Certificates and keys for a local (loopback) deployment with TLS and SuperNode authentication.

    python -m deployment.certificates OUT_DIR [--supernodes N] [--force]

writes, with the `cryptography` library only:
    ca.crt, ca.key                  a self-signed certificate authority (the --root-certificates)
    server.pem, server.key          the SuperLink's certificate, signed by the CA, for
                                    IP:127.0.0.1, IP:::1 and DNS:localhost
    supernode-<i>.key, .key.pub     one ECDSA P-384 key pair per SuperNode (OpenSSH format), for
                                    --auth-supernode-private-key / `flwr supernode register`
For local tests only: the private keys are written unencrypted.
"""

import argparse
import datetime
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from shared.cli import run_cli
from shared.errors import LoraXSError

VALID_DAYS = 30


@dataclass(frozen=True)
class CertificatePaths:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    supernode_keys: tuple[Path, ...]  # private keys; the public key is `<key>.pub`

    def all_files(self) -> list[Path]:
        ca_key = self.ca_cert.with_suffix(".key")
        pubs = [Path(f"{key}.pub") for key in self.supernode_keys]
        return [self.ca_cert, ca_key, self.server_cert, self.server_key, *self.supernode_keys, *pubs]


def certificate_paths(out_dir: Path, num_supernodes: int) -> CertificatePaths:
    return CertificatePaths(
        ca_cert=out_dir / "ca.crt",
        server_cert=out_dir / "server.pem",
        server_key=out_dir / "server.key",
        supernode_keys=tuple(out_dir / f"supernode-{i}.key" for i in range(num_supernodes)),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _certificate(subject: str, public_key, issuer: str, signing_key, is_ca: bool):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
    return builder.sign(signing_key, hashes.SHA256())


def make_certificates(out_dir: str | Path, num_supernodes: int = 2, force: bool = False) -> CertificatePaths:
    """Write the CA, the SuperLink certificate and `num_supernodes` SuperNode key pairs."""
    if num_supernodes < 0:
        raise LoraXSError(f"--supernodes must be >= 0, got {num_supernodes}")
    out_dir = Path(out_dir)
    paths = certificate_paths(out_dir, num_supernodes)
    existing = [p for p in paths.all_files() if p.exists()]
    if existing and not force:
        raise LoraXSError(f"{existing[0]} already exists; pass --force to replace the certificates")
    out_dir.mkdir(parents=True, exist_ok=True)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = _certificate("LoRA-XS local CA", ca_key.public_key(), "LoRA-XS local CA", ca_key, is_ca=True)
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = _certificate("127.0.0.1", server_key.public_key(), "LoRA-XS local CA", ca_key, is_ca=False)
    files = {
        paths.ca_cert: ca_cert.public_bytes(serialization.Encoding.PEM),
        paths.ca_cert.with_suffix(".key"): _pem_key(ca_key),
        paths.server_cert: server_cert.public_bytes(serialization.Encoding.PEM),
        paths.server_key: _pem_key(server_key),
    }
    for key_path in paths.supernode_keys:
        key = ec.generate_private_key(ec.SECP384R1())
        files[key_path] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        files[Path(f"{key_path}.pub")] = (
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
        )
    for path, data in files.items():
        path.write_bytes(data)
        if path.suffix == ".key":
            path.chmod(0o600)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployment.certificates",
        description="CA, SuperLink certificate (127.0.0.1) and SuperNode keys for local TLS tests.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--supernodes", type=int, default=2, help="SuperNode key pairs to make (default 2)")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)

    def work() -> int:
        for path in make_certificates(args.out_dir, args.supernodes, args.force).all_files():
            print(path)
        return 0

    return run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
