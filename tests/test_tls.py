"""DICOM over TLS: the node's TLS port with client certificates, and sending over TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from node.peers import LOOPBACK, free_port, run_tool, tool_env, wait_for_port, wait_until
from node.samples import CT_128, make_series, write_series
from tests.conftest import NodeRunner, ct_rule

pytestmark = pytest.mark.e2e


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(folder: Path, name: str, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and certificates it issued: server (localhost, 127.0.0.1) and client."""
    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "radnode test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder, "ca", ca_key, ca)
    for name in ("server", "client"):
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
                ),
                critical=False,
            )
        )
        _write(folder, name, key, builder.sign(ca_key, hashes.SHA256()))
    return folder


def tls_args(pki: Path, who: str = "client") -> list[str]:
    return ["+tls", str(pki / f"{who}.key"), str(pki / f"{who}.crt"), "+cf", str(pki / "ca.crt")]


def test_tls_port_requires_a_trusted_client_certificate(
    tmp_path: Path, pki: Path, node_runner: NodeRunner
) -> None:
    tls_port = free_port()
    node_runner.configure_receive_only(
        extra_node={
            "tls": {
                "port": tls_port,
                "cert": str(pki / "server.crt"),
                "key": str(pki / "server.key"),
                "ca": str(pki / "ca.crt"),
            }
        },
    )
    node_runner.start()
    wait_for_port(tls_port)
    secure = run_tool(["echoscu", *tls_args(pki), "-aec", "RADNODE", LOOPBACK, str(tls_port)])
    assert secure.returncode == 0, secure.stderr
    anonymous = run_tool(
        ["echoscu", "+tla", "+cf", str(pki / "ca.crt"), "-aec", "RADNODE", LOOPBACK, str(tls_port)]
    )
    assert anonymous.returncode != 0
    plain_on_tls = run_tool(["echoscu", "-to", "5", "-aec", "RADNODE", LOOPBACK, str(tls_port)])
    assert plain_on_tls.returncode != 0
    plain = run_tool(["echoscu", "-aec", "RADNODE", LOOPBACK, str(node_runner.port)])
    assert plain.returncode == 0

    files = write_series(make_series(CT_128, slices=2), tmp_path / "in")
    sent = run_tool(
        ["storescu", *tls_args(pki), "-aec", "RADNODE", LOOPBACK, str(tls_port), *map(str, files)]
    )
    assert sent.returncode == 0, sent.stderr
    accepted = node_runner.http("/audit?event=association-accepted")
    assert [r["detail"]["tls"] for r in accepted] == [True, False, True]


def test_outputs_are_sent_over_tls(tmp_path: Path, pki: Path, node_runner: NodeRunner) -> None:
    port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen(
        [
            "storescp",
            *tls_args(pki, "server"),
            "-rc",
            "-od",
            str(received),
            "-aet",
            "SECUREPACS",
            str(port),
        ],
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, scp)
        destination = {
            "name": "pacs",
            "ae_title": "SECUREPACS",
            "host": LOOPBACK,
            "port": port,
            "tls": True,
            "tls_ca": str(pki / "ca.crt"),
            "tls_cert": str(pki / "client.crt"),
            "tls_key": str(pki / "client.key"),
        }
        node_runner.configure([destination], [ct_rule()])
        node_runner.start()
        files = write_series(make_series(CT_128, slices=2), tmp_path / "in")
        sent = run_tool(
            ["storescu", "-aec", "RADNODE", LOOPBACK, str(node_runner.port), *map(str, files)]
        )
        assert sent.returncode == 0
        stored = wait_until(
            lambda: (f := list(received.iterdir())) and len(f) == 2 and f, 120, "outputs over TLS"
        )
        assert all(p.name.startswith("SC") for p in stored)  # Secondary Captures
    finally:
        scp.terminate()
        scp.wait(10)
