"""A local certificate authority and a server certificate for loopback HTTPS stand-ins.

The Key Vault SDK only talks to https vaults and MSAL only to https authorities, so the stand-ins
for them serve TLS with a certificate from this CA. Clients trust it through REQUESTS_CA_BUNDLE,
which points at `bundle.pem`: the public CA roots plus this CA, so nothing else loses trust.
"""

import datetime
import ipaddress
import ssl
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_VALIDITY = datetime.timedelta(days=825)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def ensure_certificates(folder: Path) -> Path:
    """Creates (once) the CA, the server certificate and the CA bundle in `folder`.

    Returns the folder; it holds `server.pem`, `server-key.pem`, `ca.pem` and `bundle.pem`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    server_cert = folder / "server.pem"
    bundle = folder / "bundle.pem"
    if server_cert.exists() and bundle.exists():
        return folder
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Automate365 local stand-in CA"))
        .issuer_name(_name("Automate365 local stand-in CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write_key(folder / "server-key.pem", key)
    (folder / "ca.pem").write_bytes(ca_pem)
    server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca_pem)
    return folder


def server_context(folder: Path) -> ssl.SSLContext:
    ensure_certificates(folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(folder / "server.pem", folder / "server-key.pem")
    return context


def ca_bundle(folder: Path) -> Path:
    return ensure_certificates(folder) / "bundle.pem"
