"""The local stack with security on: Kafka with only a SASL_SSL listener (SCRAM-SHA-512 users) and Redis with
TLS only and an ACL user, both on 127.0.0.1, with a CA and server certificate generated at first start.

For testing linewatch's security settings against real secured servers (tests/integration/test_secured_stack.py)
and for trying them out locally:

    stack = SecuredStack(state_dir=Path(".state/secured"), cache_dir=Path.home() / ".cache" / "linewatch")
    stack.up()
    settings = Settings(**stack.settings_overrides())   # SASL_SSL + SCRAM, rediss:// with an ACL user
    ...
    stack.down()

Credentials and the CA live in `<state_dir>/tls/` (mode 0600) and are reused on restart, so a formatted
Kafka log dir keeps matching its SCRAM users. Kafka's KRaft controller listener stays PLAINTEXT on loopback
(it serves no produce/fetch); the broker itself accepts nothing unauthenticated.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path

from deploy.localstack import LocalStack, StackError

KAFKA_MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "admin"  # the broker's own inter-broker identity


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # CA certificate (PEM): what clients trust
    cert: Path  # server certificate (PEM), SAN localhost and 127.0.0.1
    key: Path  # server key (PEM, unencrypted, 0600): Redis reads it
    keystore: Path  # PKCS#12 with key + chain, for Kafka
    keystore_password: str


def write_tls(directory: Path, keystore_password: str) -> TlsFiles:
    """A fresh CA and a server certificate it signs (valid a year), unless `directory` holds them already."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID

    files = TlsFiles(
        directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "server.p12",
        keystore_password,
    )  # fmt: skip
    if all(p.is_file() for p in (files.ca, files.cert, files.key, files.keystore)):
        return files
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (
        x509.CertificateBuilder().subject_name(name("linewatch local CA")).issuer_name(name("linewatch local CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                              x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    _write_private(files.ca, ca.public_bytes(pem))
    _write_private(files.cert, cert.public_bytes(pem) + ca.public_bytes(pem))
    _write_private(
        files.key,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    encryption = (  # what Java's PKCS12 reader takes on every JDK 11+
        serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(20000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256())
        .build(keystore_password.encode())
    )  # fmt: skip
    _write_private(files.keystore, pkcs12.serialize_key_and_certificates(b"kafka", key, cert, [ca], encryption))
    return files


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


@dataclass
class SecuredStack(LocalStack):
    """`LocalStack` with Kafka SASL_SSL/SCRAM-SHA-512 and Redis TLS + ACL; `settings_overrides()` connects."""

    username: str = "linewatch"
    redis_username: str = "linewatch"
    secrets_file: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.brokers != 1:  # the listeners below are node 1's
            raise StackError(f"the secured stack runs one Kafka node, not {self.brokers}")
        self.state_dir = Path(self.state_dir)
        tls_dir = self.state_dir / "tls"
        tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        creds = tls_dir / "credentials.json"
        if creds.is_file():
            self.secrets_file = json.loads(creds.read_text())
        else:
            self.secrets_file = {k: secrets.token_hex(16) for k in ("kafka", "admin", "redis", "keystore")}
            _write_private(creds, json.dumps(self.secrets_file).encode())
        self.tls = write_tls(tls_dir, self.secrets_file["keystore"])
        self.kafka_extra_properties = self._kafka_properties()
        self.kafka_format_args = tuple(
            arg
            for user, pw in ((ADMIN_USER, self.secrets_file["admin"]), (self.username, self.kafka_password))
            for arg in ("--add-scram", f"{KAFKA_MECHANISM}=[name={user},password={pw}]")
        )
        self.redis_extra_config = self._redis_config()
        self.kafka_client = {
            "security_protocol": "SASL_SSL",
            "ssl_context": ssl.create_default_context(cafile=str(self.tls.ca)),
            "sasl_mechanism": KAFKA_MECHANISM,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.kafka_password,
        }
        self.redis_client = {"ssl_ca_certs": str(self.tls.ca)}

    @property
    def kafka_password(self) -> str:
        return self.secrets_file["kafka"]

    @property
    def redis_password(self) -> str:
        return self.secrets_file["redis"]

    @property
    def redis_url(self) -> str:
        return f"rediss://{self.redis_username}:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    def status(self):
        """As LocalStack's, with the Redis password masked in the address."""
        return [replace(st, address=st.address.replace(self.redis_password, "***")) for st in super().status()]

    def settings_overrides(self) -> dict:
        """Keyword arguments for `Settings(...)` that connect to this stack (secrets in memory only)."""
        return {
            "kafka": {
                "bootstrap": self.bootstrap,
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": KAFKA_MECHANISM,
                "sasl_username": self.username,
                "sasl_password": self.kafka_password,
                "ssl_cafile": str(self.tls.ca),
            },
            "redis": {"url": self.redis_url, "ssl_ca_certs": str(self.tls.ca)},
        }

    def _kafka_properties(self) -> str:
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN_USER}" password="{self.secrets_file["admin"]}";'
        )
        return f"""
# ---- secured by deploy/secured.py (later keys override the ones above)
listeners=SASL_SSL://127.0.0.1:{self.kafka_port},CONTROLLER://127.0.0.1:{self.controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{self.kafka_port}
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms={KAFKA_MECHANISM}
sasl.mechanism.inter.broker.protocol={KAFKA_MECHANISM}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}
ssl.keystore.type=PKCS12
ssl.keystore.location={self.tls.keystore}
ssl.keystore.password={self.tls.keystore_password}
ssl.key.password={self.tls.keystore_password}
ssl.truststore.type=PEM
ssl.truststore.location={self.tls.ca}
ssl.client.auth=none
"""

    def _redis_config(self) -> str:
        return f"""
# ---- secured by deploy/secured.py: TLS only, no default user
port 0
tls-port {self.redis_port}
tls-cert-file {self.tls.cert}
tls-key-file {self.tls.key}
tls-ca-cert-file {self.tls.ca}
tls-auth-clients no
user default off
user {self.redis_username} on >{self.redis_password} ~* &* +@all
"""
