"""The mirror serving HTTPS: `tls_cert`/`tls_key` checked at load, HTTPS on `listen` or on
`tls_listen` beside plain HTTP, the certificate reloaded on SIGHUP (by every worker too),
all against the real `mirror serve` process and certificates from a private CA."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mirror import config
from mirror.server import tls
from testkit.fakeupstream import FakeRegistry, Manifest
from testkit.mirrorproc import MirrorProcess, free_port, run_mirror
from testkit.tls import PrivateCA, make_private_ca
from tests.conftest import sha256

# Bound (not a timing check) on the wait from SIGHUP to the log line saying how the reload
# went: generous, since workers on a loaded 2-core machine may take seconds to get to it.
RELOAD_WAIT = 20.0
IO_TIMEOUT = aiohttp.ClientTimeout(total=10)


class HttpsMirrorProcess(MirrorProcess):
    """`mirror serve --tls-cert --tls-key` with HTTPS on --listen: `url` is https://, and it
    is ready once GET /v2/ answers 200 to a client trusting `ca`."""

    def __init__(
        self,
        upstream_url: str,
        data_dir: Path,
        ca: PrivateCA,
        *,
        cwd: Path,
        extra_args: Sequence[str] = (),
        workers: str = "1",
    ) -> None:
        tls_args = ["--tls-cert", str(ca.cert_file), "--tls-key", str(ca.key_file)]
        super().__init__(
            upstream_url, data_dir, cwd=cwd, extra_args=[*tls_args, *extra_args], workers=workers
        )
        self.ca = ca

    @property
    def url(self) -> str:
        return "https://" + super().url.removeprefix("http://")

    def _probe_session(self) -> aiohttp.ClientSession:
        """MirrorProcess's own probe would not trust the private CA."""
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(self.ca)))


def trusting(ca: PrivateCA) -> ssl.SSLContext:
    """A client context that trusts `ca` only (and checks the host name)."""
    return ssl.create_default_context(cafile=str(ca.ca_file))


def leaf_der(ca: PrivateCA) -> bytes:
    """The server certificate `ca` issued, as DER (what a client sees on the wire)."""
    return ssl.PEM_cert_to_DER_cert(ca.cert_file.read_text())


async def served_certificate(port: int, *, max_version: ssl.TLSVersion | None = None) -> bytes:
    """The certificate a new connection to 127.0.0.1:`port` is shown (not verified)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        context.maximum_version = max_version
    async with asyncio.timeout(5):
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
    assert isinstance(der, bytes)
    return der


async def get_v2(url: str, ca: PrivateCA | None) -> int:
    """GET /v2/ on a new connection; `ca` None: trusting only the system's CAs."""
    connector = aiohttp.TCPConnector(ssl=trusting(ca) if ca is not None else True)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=IO_TIMEOUT) as session,
        session.get(url + "/v2/") as resp,
    ):
        return resp.status


async def sighup_and_wait(proc: MirrorProcess, outcome: str, count: int = 1) -> None:
    """SIGHUP the mirror and wait until its log has `count` more lines with `outcome`."""
    before = proc.stderr.count(outcome)
    os.kill(proc.pid, signal.SIGHUP)
    await proc.wait_for_log(outcome, count=before + count, within=RELOAD_WAIT)


def replace_pair(current: PrivateCA, new: PrivateCA) -> None:
    """Overwrite `current`'s certificate and key files with `new`'s (as a renewal does)."""
    current.cert_file.write_bytes(new.cert_file.read_bytes())
    current.key_file.write_bytes(new.key_file.read_bytes())


@pytest.fixture
def ca(tmp_path: Path) -> PrivateCA:
    return make_private_ca(tmp_path / "ca")


@pytest.fixture
def other_ca(tmp_path: Path) -> PrivateCA:
    """A second, unrelated CA; its server key is RSA (the first one's is ECDSA)."""
    return make_private_ca(tmp_path / "other-ca", key_type="rsa")


@pytest.fixture
async def https_mirror(
    upstream: FakeRegistry, data_dir: Path, workdir: Path, ca: PrivateCA
) -> AsyncIterator[HttpsMirrorProcess]:
    """`mirror serve` with HTTPS on --listen, certificate from `ca`."""
    proc = HttpsMirrorProcess(upstream.url, data_dir, ca, cwd=workdir)
    async with proc:
        yield proc


# --- configuration ----------------------------------------------------------------------------


def load(**overrides: str) -> config.Config:
    """The settings as `mirror serve` takes them: values first, then the files they name."""
    loaded = config.load(config_file=None, environ={}, overrides=overrides)
    tls.check_files(loaded)
    return loaded.config


def test_tls_settings_load_and_decide_the_listeners(ca: PrivateCA) -> None:
    plain = load(listen="127.0.0.1:5000")
    assert (plain.serving.tls_cert, plain.serving.tls_key, plain.serving.tls_listen) == (
        None,
        None,
        None,
    )
    assert [str(x) for x in tls.listeners(plain)] == ["127.0.0.1:5000 (http)"]

    cert, key = str(ca.cert_file), str(ca.key_file)
    https = load(listen="127.0.0.1:5000", tls_cert=cert, tls_key=key)
    assert (https.serving.tls_cert, https.serving.tls_key) == (ca.cert_file, ca.key_file)
    assert [str(x) for x in tls.listeners(https)] == ["127.0.0.1:5000 (https)"]

    both = load(listen="127.0.0.1:5000", tls_cert=cert, tls_key=key, tls_listen="[::]:5443")
    assert [str(x) for x in tls.listeners(both)] == ["127.0.0.1:5000 (http)", ":::5443 (https)"]


def test_tls_settings_come_from_the_file_and_are_shown_by_check_config(
    ca: PrivateCA, tmp_path: Path
) -> None:
    file = tmp_path / "mirror.toml"
    file.write_text(f'tls_cert = "{ca.cert_file}"\ntls_key = "{ca.key_file}"\n')
    loaded = config.load(config_file=file, environ={"MIRROR_TLS_LISTEN": "0.0.0.0:5443"})
    rendered = config.render(loaded)
    assert f'tls_cert = "{ca.cert_file}"  # {file}' in rendered
    assert f'tls_key = "{ca.key_file}"  # {file}' in rendered
    assert 'tls_listen = "0.0.0.0:5443"  # MIRROR_TLS_LISTEN' in rendered


def write_encrypted_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


@pytest.mark.parametrize(
    ("case", "named", "reason"),
    [
        ("cert only", "tls_cert (from --tls-cert)", "needs tls_key as well"),
        ("key only", "tls_key (from --tls-key)", "needs tls_cert as well"),
        ("tls_listen only", "tls_listen (from --tls-listen)", "needs tls_cert and tls_key"),
        ("tls_listen is listen", "tls_listen (from --tls-listen)", "is `listen` as well"),
        ("no cert file", "tls_cert (from --tls-cert)", "No such file or directory"),
        ("key as cert", "tls_cert (from --tls-cert)", "holds no PEM certificate"),
        ("corrupt cert", "tls_cert (from --tls-cert)", "is not a valid certificate"),
        ("cert as key", "tls_key (from --tls-key)", "holds no PEM private key"),
        ("another key", "tls_key (from --tls-key)", "is not the private key of the certificate"),
        ("rsa key, ec cert", "tls_key (from --tls-key)", "is not the private key"),
        ("encrypted key", "tls_key (from --tls-key)", "is encrypted"),
    ],
)
def test_a_bad_tls_setting_is_an_error_naming_the_key(
    case: str, named: str, reason: str, ca: PrivateCA, other_ca: PrivateCA, tmp_path: Path
) -> None:
    cert, key = str(ca.cert_file), str(ca.key_file)
    corrupt = tmp_path / "corrupt.pem"
    corrupt.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    settings = {
        "cert only": {"tls_cert": cert},
        "key only": {"tls_key": key},
        "tls_listen only": {"tls_listen": "127.0.0.1:5443"},
        "tls_listen is listen": {"tls_cert": cert, "tls_key": key, "tls_listen": "127.0.0.1:5000"},
        "no cert file": {"tls_cert": str(tmp_path / "missing.pem"), "tls_key": key},
        "key as cert": {"tls_cert": key, "tls_key": key},
        "corrupt cert": {"tls_cert": str(corrupt), "tls_key": key},
        "cert as key": {"tls_cert": cert, "tls_key": cert},
        "another key": {"tls_cert": cert, "tls_key": str(make_private_ca(tmp_path / "3").key_file)},
        "rsa key, ec cert": {"tls_cert": cert, "tls_key": str(other_ca.key_file)},
        "encrypted key": {"tls_cert": cert, "tls_key": str(write_encrypted_key(tmp_path / "k"))},
    }[case]
    with pytest.raises(config.ConfigError) as raised:
        load(listen="127.0.0.1:5000", **settings)
    message = str(raised.value)
    assert message.startswith(named), message
    assert reason in message, message


async def test_a_bad_pair_at_start_stops_serve_with_a_config_error(
    ca: PrivateCA, other_ca: PrivateCA, workdir: Path
) -> None:
    result = await run_mirror(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--tls-cert",
        str(ca.cert_file),
        "--tls-key",
        str(other_ca.key_file),
        cwd=workdir,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("mirror: configuration error: tls_key (from --tls-key): ")
    assert f"{other_ca.key_file} is not the private key of the certificate" in result.stderr
    assert "Traceback" not in result.stderr


# --- serving ----------------------------------------------------------------------------------


async def test_https_on_listen_is_verified_with_the_ca_and_refused_without_it(
    https_mirror: HttpsMirrorProcess, ca: PrivateCA
) -> None:
    assert await get_v2(https_mirror.url, ca) == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get_v2(https_mirror.url, None)  # the system CAs do not know the private CA
    assert await served_certificate(https_mirror.port) == leaf_der(ca)
    assert f"listening on 127.0.0.1:{https_mirror.port} (https)" in https_mirror.stderr
    # Only HTTPS there: a plain-HTTP request gets no HTTP answer.
    with pytest.raises(aiohttp.ClientError):
        await get_v2(f"http://127.0.0.1:{https_mirror.port}", None)


async def test_tls_1_2_clients_get_a_forward_secret_aead_cipher(
    https_mirror: HttpsMirrorProcess,
) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    async with asyncio.timeout(5):
        _, writer = await asyncio.open_connection("127.0.0.1", https_mirror.port, ssl=context)
        name, version, _bits = writer.get_extra_info("cipher")
        writer.close()
    assert version == "TLSv1.2"
    assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name), name
    context = tls.server_context(https_mirror.ca.cert_file, https_mirror.ca.key_file)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_http_on_listen_and_https_on_tls_listen_serve_together(
    upstream: FakeRegistry, alpine: Manifest, data_dir: Path, workdir: Path, ca: PrivateCA
) -> None:
    tls_port = free_port()
    args = ["--tls-cert", str(ca.cert_file), "--tls-key", str(ca.key_file)]
    args += ["--tls-listen", f"127.0.0.1:{tls_port}"]
    async with MirrorProcess(upstream.url, data_dir, cwd=workdir, extra_args=args) as proc:
        https_url = f"https://127.0.0.1:{tls_port}"
        assert f"listening on 127.0.0.1:{proc.port} (http)" in proc.stderr
        assert f"listening on 127.0.0.1:{tls_port} (https)" in proc.stderr
        manifest_path = f"/v2/library/alpine/manifests/{alpine.digest}"
        blob_path = f"/v2/library/alpine/blobs/{alpine.layers[0].digest}"
        connector = aiohttp.TCPConnector(ssl=trusting(ca))
        async with aiohttp.ClientSession(connector=connector, timeout=IO_TIMEOUT) as session:
            for base in (proc.url, https_url):  # the same cache behind both
                async with session.get(base + manifest_path) as resp:
                    assert resp.status == 200
                    assert sha256(await resp.read()) == alpine.digest
                async with session.get(base + blob_path) as resp:
                    assert resp.status == 200
                    assert sha256(await resp.read()) == alpine.layers[0].digest
        assert await served_certificate(tls_port) == leaf_der(ca)
        with pytest.raises(ssl.SSLError):
            await served_certificate(proc.port)  # no TLS on the plain-HTTP listener
        assert await proc.stop() == 0, proc.stderr
        assert not proc.killed


async def test_sighup_serves_the_new_certificate_to_new_connections(
    https_mirror: HttpsMirrorProcess, ca: PrivateCA, other_ca: PrivateCA
) -> None:
    old = leaf_der(ca)
    async with asyncio.timeout(10):
        # A connection opened before the reload...
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", https_mirror.port, ssl=trusting(ca)
        )
        try:
            # ...a renewal replaces both files (here with an RSA key where there was ECDSA)...
            replace_pair(ca, other_ca)
            await sighup_and_wait(https_mirror, "reloaded TLS certificate")

            assert await served_certificate(https_mirror.port) == leaf_der(other_ca) != old
            assert await get_v2(https_mirror.url, other_ca) == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await get_v2(https_mirror.url, ca)  # the old CA's certificate is gone

            # ...carries on with the certificate it got.
            writer.write(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
            assert writer.get_extra_info("ssl_object").getpeercert(binary_form=True) == old
        finally:
            writer.close()
    assert await https_mirror.stop() == 0, https_mirror.stderr


async def test_sighup_with_a_broken_pair_keeps_serving_the_current_certificate(
    https_mirror: HttpsMirrorProcess, ca: PrivateCA, tmp_path: Path
) -> None:
    unrelated = make_private_ca(tmp_path / "unrelated")
    ca.key_file.write_bytes(unrelated.key_file.read_bytes())  # a half-done renewal

    await sighup_and_wait(https_mirror, "TLS reload failed, keeping the current certificate")

    assert "is not the private key of the certificate" in https_mirror.stderr
    assert await served_certificate(https_mirror.port) == leaf_der(ca)
    assert await get_v2(https_mirror.url, ca) == 200
    # Once the renewal is complete, the next SIGHUP picks it up.
    replace_pair(ca, unrelated)
    await sighup_and_wait(https_mirror, "reloaded TLS certificate")
    assert await served_certificate(https_mirror.port) == leaf_der(unrelated)
    assert await https_mirror.stop() == 0, https_mirror.stderr


async def test_workers_serve_https_and_each_reloads_on_sighup(
    upstream: FakeRegistry, data_dir: Path, workdir: Path, ca: PrivateCA, other_ca: PrivateCA
) -> None:
    https = HttpsMirrorProcess(upstream.url, data_dir, ca, cwd=workdir, workers="2")
    async with https as proc:
        assert "serving in 2 worker processes (workers = 2)" in proc.stderr
        assert [await get_v2(proc.url, ca) for _ in range(6)] == [200] * 6

        replace_pair(ca, other_ca)
        # The supervisor relays SIGHUP; each worker reloads and says so.
        await sighup_and_wait(proc, "reloaded TLS certificate", count=2)

        for _ in range(8):  # whichever worker accepts, the new certificate
            assert await served_certificate(proc.port) == leaf_der(other_ca)
        assert await get_v2(proc.url, other_ca) == 200
        assert "exited with" not in proc.stderr  # no worker died of the SIGHUP
        assert await proc.stop() == 0, proc.stderr
        assert not proc.killed
