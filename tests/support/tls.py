"""Throw-away TLS material for tests, made with the ``openssl`` command line.

``make_ca(dir)`` creates a self-signed CA; ``ca.issue(dir, "server", ...)`` signs a
server certificate for the given DNS names and IP addresses, ``ca.issue_client(dir, "alice",
organizations=["dev"])`` a client certificate. Both use P-256 keys and
carry the extensions Python's strict X.509 checks (``VERIFY_X509_STRICT``) expect::

    ca = make_ca(tmp_path / "ca")
    cert = ca.issue(tmp_path / "srv", "localhost", ips=["127.0.0.1"])
    server_ctx = cert.server_context()
    client_ctx = ssl.create_default_context(cafile=ca.cert)
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertificateAuthority", "IssuedCert", "make_ca"]

_DAYS = "2"


def _openssl(*args: str | Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise FileNotFoundError("the openssl command line tool is not installed")
    result = subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed:\n{result.stderr}")


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA (PEM certificate and key) that can issue server certificates."""

    cert: Path
    key: Path

    def issue(
        self,
        directory: Path,
        common_name: str,
        *,
        dns: Sequence[str] = ("localhost",),
        ips: Sequence[str] = ("127.0.0.1",),
    ) -> IssuedCert:
        """Sign a server certificate for ``dns`` names and ``ips``."""
        directory.mkdir(parents=True, exist_ok=True)
        key = directory / f"{common_name}.key"
        csr = directory / f"{common_name}.csr"
        cert = directory / f"{common_name}.crt"
        ext = directory / f"{common_name}.ext"
        sans = [f"DNS:{name}" for name in dns] + [f"IP:{ip}" for ip in ips]
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
            f"subjectAltName={','.join(sans)}\n"
        )
        _new_key(key)
        _openssl("req", "-new", "-key", key, "-subj", f"/CN={common_name}", "-out", csr)
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
            "-CAcreateserial", "-days", _DAYS, "-sha256", "-extfile", ext, "-out", cert,
        )  # fmt: skip
        return IssuedCert(cert, key)

    def issue_client(
        self, directory: Path, common_name: str, *, organizations: Sequence[str] = ()
    ) -> IssuedCert:
        """Sign a client certificate: subject ``CN=common_name`` with one ``O=`` per
        organization (a Kubernetes API server reads them as user name and groups)."""
        directory.mkdir(parents=True, exist_ok=True)
        key = directory / f"{common_name}.key"
        csr = directory / f"{common_name}.csr"
        cert = directory / f"{common_name}.crt"
        ext = directory / f"{common_name}.ext"
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=clientAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        subject = "".join(f"/O={o}" for o in organizations) + f"/CN={common_name}"
        _new_key(key)
        _openssl("req", "-new", "-key", key, "-subj", subject, "-out", csr)
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
            "-CAcreateserial", "-days", _DAYS, "-sha256", "-extfile", ext, "-out", cert,
        )  # fmt: skip
        return IssuedCert(cert, key)


def make_ca(directory: Path, common_name: str = "podgate-test-ca") -> CertificateAuthority:
    """Create a self-signed CA in ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "ca.key"
    cert = directory / "ca.crt"
    _new_key(key)
    _openssl(
        "req", "-x509", "-new", "-key", key, "-sha256", "-days", _DAYS,
        "-subj", f"/CN={common_name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        "-out", cert,
    )  # fmt: skip
    return CertificateAuthority(cert, key)
