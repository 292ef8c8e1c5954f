"""A token server that issues registry bearer tokens the way Docker Hub's auth.docker.io does,
for the real `docker-registry` upstream of the integration suite and the benchmark.

Run as a process (the fixtures do this; see `TokenServer` in `testkit.upstream`):

    python -m testkit.tokenserver --listen 127.0.0.1:PORT --key KEY.pem \\
        --cert CERT.pem --issuer ISSUER --service SERVICE --users user:pass

`GET /token?service=S&scope=repository:NAME:pull,push[&scope=...]` answers
`{token, access_token, expires_in, issued_at}`. The grant is the intersection of what was asked
for and what the caller may do (never an error for asking too much): anonymous callers may
`pull`; a configured user (HTTP Basic) may `pull` and `push`; a wrong password or unknown user
is a 401. `POST /token` (the OAuth2 password grant of the distribution token spec) answers the
same way. Every request is logged to stderr, one line each.

The token is a JWT signed with the key (ES256 for an EC key, RS256 for RSA) whose `x5c` header
carries the certificate: the registry's `rootcertbundle` holds that same self-signed
certificate, which is how distribution 2.8 verifies it. `make_signing_material` creates both.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import json
import secrets
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from testkit.tls import self_signed_ca, write_pem

TOKEN_LIFETIME = 300  # seconds, as Docker Hub's tokens
ANONYMOUS_ACTIONS = frozenset({"pull"})
USER_ACTIONS = frozenset({"pull", "push"})


def make_signing_material(directory: Path, common_name: str = "mirror-test-token-issuer") -> None:
    """Write `key.pem` (EC P-256) and `cert.pem` (a self-signed certificate for it, valid
    for a day) into `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    directory.mkdir(parents=True, exist_ok=True)
    write_pem(directory / "key.pem", key)
    write_pem(directory / "cert.pem", self_signed_ca(key, common_name))


def parse_scope(scope: str) -> tuple[str, str, set[str]] | None:
    """`repository:library/alpine:pull,push` -> ("repository", "library/alpine", {pull, push}).
    The name may itself hold colons (`host:5000/name`), so the type is split off the left and
    the actions off the right. None for a malformed scope (which is then ignored)."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not (sep and sep2 and kind and name):
        return None
    return kind, name, {a for a in actions.split(",") if a}


class Issuer:
    """Decides grants and signs tokens."""

    def __init__(
        self,
        key_pem: bytes,
        cert_pem: bytes,
        issuer: str,
        service: str,
        users: Mapping[str, str],
    ) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            self.algorithm = "ES256"
        elif isinstance(key, rsa.RSAPrivateKey):
            self.algorithm = "RS256"
        else:
            raise ValueError(f"unsupported key type {type(key).__name__}")
        self.key = key
        cert = x509.load_pem_x509_certificate(cert_pem)
        self.x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self.issuer = issuer
        self.service = service
        self.users = dict(users)

    def authenticate(self, authorization: str | None) -> tuple[bool, str]:
        """(ok, subject): anonymous (no header) is ok with subject ""; Basic with a known
        user and its password is ok with that user; anything else is not ok."""
        if not authorization:
            return True, ""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False, ""
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False, ""
        user, _, password = decoded.partition(":")
        expected = self.users.get(user)
        if expected is None or not secrets.compare_digest(expected, password):
            return False, ""
        return True, user

    def grant(self, subject: str, scopes: Iterable[str]) -> list[dict[str, Any]]:
        """The access claim: each requested scope cut down to what `subject` may do; scopes
        left with no action are dropped."""
        allowed = USER_ACTIONS if subject else ANONYMOUS_ACTIONS
        access: list[dict[str, Any]] = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            kind, name, actions = parsed
            if kind != "repository":
                continue
            granted = sorted(actions & allowed)
            if granted:
                access.append({"type": kind, "name": name, "actions": granted})
        return access

    def issue(self, subject: str, scopes: Sequence[str]) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + TOKEN_LIFETIME,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": self.grant(subject, scopes),
        }
        token = jwt.encode(
            claims,
            self.key,
            algorithm=self.algorithm,
            headers={"typ": "JWT", "x5c": self.x5c},
        )
        issued_at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        return {
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_LIFETIME,
            "issued_at": issued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


class TokenHandler(BaseHTTPRequestHandler):
    """`/token` over HTTP/1.1 for the `issuer` a subclass binds (see `make_handler`)."""

    issuer: ClassVar[Issuer]
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a keep-alive client's
    # delayed ACK would hold every token after the first for ~40 ms.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/token":
            self._send(404, {"errors": [{"code": "NOT_FOUND", "message": parts.path}]})
            return
        self._answer(parse_qs(parts.query), self.headers.get("Authorization"))

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace")
        if parts.path != "/token":
            self._send(404, {"errors": [{"code": "NOT_FOUND", "message": parts.path}]})
            return
        form = parse_qs(body)
        authorization = self.headers.get("Authorization")
        if form.get("grant_type") == ["password"]:
            pair = f"{form.get('username', [''])[0]}:{form.get('password', [''])[0]}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        elif form.get("grant_type") != ["refresh_token"]:
            self._send(400, {"error": "unsupported_grant_type"})
            return
        # Scopes are space-separated in the OAuth2 form.
        form["scope"] = [s for value in form.get("scope", []) for s in value.split()]
        self._answer(form, authorization)

    def _answer(self, params: Mapping[str, list[str]], authorization: str | None) -> None:
        ok, subject = self.issuer.authenticate(authorization)
        if not ok:
            self._send(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "incorrect username or password"}]},
                {"WWW-Authenticate": 'Basic realm="mirror-test-token-server"'},
            )
            return
        if params.get("service", [self.issuer.service])[0] != self.issuer.service:
            self._send(400, {"errors": [{"code": "DENIED", "message": "unknown service"}]})
            return
        self._send(200, self.issuer.issue(subject, params.get("scope", [])))

    def _send(
        self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")
        sys.stderr.flush()


def make_handler(issuer: Issuer) -> type[BaseHTTPRequestHandler]:
    """The handler class for a server answering for `issuer` (http.server makes one per
    request, so the issuer is bound to a class, not passed to an instance)."""

    class Handler(TokenHandler):
        pass

    Handler.issuer = issuer
    return Handler


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--key", required=True, type=Path, help="PEM private key (EC or RSA)")
    parser.add_argument("--cert", required=True, type=Path, help="PEM certificate for the key")
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--users", nargs="*", default=[], metavar="USER:PASSWORD")
    args = parser.parse_args(argv)

    host, _, port = args.listen.rpartition(":")
    users = dict(pair.split(":", 1) for pair in args.users)
    issuer = Issuer(args.key.read_bytes(), args.cert.read_bytes(), args.issuer, args.service, users)
    server = ThreadingHTTPServer((host, int(port)), make_handler(issuer))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, _interrupt)  # stop like on Ctrl-C: exit status 0
    print(f"token server listening on {host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
