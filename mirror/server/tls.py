"""Serving HTTPS: the server's TLS context, which listener speaks what, and reloading the
certificate without a restart.

The context has modern defaults: TLS 1.2 or newer, TLS 1.2 only with forward-secret AEAD
ciphers (ECDHE with AES-GCM or ChaCha20), no renegotiation, ALPN `http/1.1`.

Reloading (SIGHUP) must not need new listening sockets, so the context the listeners were
started with stays theirs; what changes is the certificate each new handshake gets. Loading
the new pair into that same context is not enough: OpenSSL keeps one certificate per key
type, so after an ECDSA certificate is replaced by an RSA one the old ECDSA certificate is
still there and still preferred. Instead each reload builds a fresh context, and the
listeners' context hands every handshake over to the newest one (its `sni_callback`, which
OpenSSL calls for every ClientHello, with or without a server name). Connections already
open keep the certificate they started with.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mirror.config import Config, ConfigError, Listen, LoadedConfig

log = logging.getLogger(__name__)

# TLS 1.2 cipher suites (TLS 1.3 has only good ones and is not affected by this string).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_PEM_CERT = "-----BEGIN CERTIFICATE-----"
_PEM_CERT_END = "-----END CERTIFICATE-----"


class TLSFileError(ValueError):
    """A certificate or key file that cannot be served; `file` says which one is wrong."""

    def __init__(self, file: Literal["cert", "key"], message: str) -> None:
        super().__init__(message)
        self.file = file


@dataclass(frozen=True)
class Listener:
    """One address the mirror serves on, and whether it speaks HTTPS there."""

    address: Listen
    https: bool

    def __str__(self) -> str:
        return f"{self.address} ({'https' if self.https else 'http'})"


def listeners(config: Config) -> tuple[Listener, ...]:
    """Where to serve what: without TLS, `listen` is plain HTTP; with TLS, `listen` serves
    HTTPS, unless `tls_listen` is set: then `listen` stays HTTP and `tls_listen` is HTTPS."""
    if config.serving.tls_cert is None:
        return (Listener(config.serving.listen, https=False),)
    if config.serving.tls_listen is None:
        return (Listener(config.serving.listen, https=True),)
    return (
        Listener(config.serving.listen, https=False),
        Listener(config.serving.tls_listen, https=True),
    )


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context serving the PEM certificate chain in `cert_file` (the server's
    certificate first, then intermediates) with the unencrypted PEM key in `key_file`.

    Raises TLSFileError naming the file at fault."""
    cert_pem = _read(cert_file, "cert")
    key_pem = _read(key_file, "key")
    if _PEM_CERT not in cert_pem:
        raise TLSFileError("cert", f"{cert_file} holds no PEM certificate")
    if "PRIVATE KEY-----" not in key_pem:
        raise TLSFileError("key", f"{key_file} holds no PEM private key")
    try:
        # Parses every certificate in the chain; the key is not involved yet.
        ssl.create_default_context().load_verify_locations(cadata=cert_pem)
    except ssl.SSLError as exc:
        raise TLSFileError("cert", f"{cert_file} is not a valid certificate: {exc}") from None
    context = _new_context()
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except _EncryptedKey:
        raise TLSFileError(
            "key", f"{key_file} is encrypted; the mirror needs an unencrypted key"
        ) from None
    except OSError as exc:  # ssl.SSLError included; files changed since read: rare
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise TLSFileError(
            "key", f"{key_file} is not the private key of the certificate in {cert_file} ({reason})"
        ) from None
    return context


def check_files(loaded: LoadedConfig) -> None:
    """The certificate and key the config names make a pair that can be served; else a
    ConfigError naming the key at fault and where its value came from. The config checks
    only that both or neither are set; reading the files is the server's job."""
    cert, key = loaded.config.serving.tls_cert, loaded.config.serving.tls_key
    if cert is None or key is None:
        return
    try:
        server_context(cert, key)
    except TLSFileError as exc:
        name = "tls_cert" if exc.file == "cert" else "tls_key"
        raise ConfigError(f"{name} (from {loaded.sources[name]}): {exc}") from None


def fingerprint(cert_file: Path) -> str:
    """The SHA-256 fingerprint of the first (the server's) certificate in `cert_file`, as
    `openssl x509 -fingerprint -sha256` prints it; "" if it cannot be read."""
    try:
        text = cert_file.read_text(errors="replace")
        start = text.index(_PEM_CERT)
        der = ssl.PEM_cert_to_DER_cert(
            text[start : text.index(_PEM_CERT_END, start)] + _PEM_CERT_END
        )
    except (OSError, ValueError):
        return ""
    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest())


class ServerTLS:
    """The certificate the HTTPS listeners serve, reloadable.

    `context` is what the listeners are started with; `reload()` reads the files again and,
    if they make a usable pair, every new connection gets the new certificate. A pair that
    does not work is logged and the current certificate kept.
    """

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = server_context(cert_file, key_file)  # TLSFileError
        self.context.sni_callback = self._use_current
        self._current = self.context
        log.info("serving TLS certificate %s (SHA-256 %s)", cert_file, fingerprint(cert_file))

    def reload(self, *, announce: bool = True) -> bool:
        """Load the files again; True if the new pair is now served. `announce`: log
        success at info (else debug; a supervisor whose workers announce it themselves)."""
        try:
            fresh = server_context(self.cert_file, self.key_file)
        except TLSFileError as exc:
            log.error("TLS reload failed, keeping the current certificate: %s", exc)
            return False
        self._current = fresh
        log.log(
            logging.INFO if announce else logging.DEBUG,
            "reloaded TLS certificate %s (SHA-256 %s)",
            self.cert_file,
            fingerprint(self.cert_file),
        )
        return True

    def _use_current(
        self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        if self._current is not context:
            connection.context = self._current


def _new_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    return context


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    # Called only for an encrypted key; without it OpenSSL would prompt on the terminal
    # (and block a reload).
    raise _EncryptedKey


def _read(path: Path, file: Literal["cert", "key"]) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as exc:
        raise TLSFileError(file, f"cannot read {path}: {exc.strerror or exc}") from None
