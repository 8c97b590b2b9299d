"""A real webhook receiver for tests: an HTTP(S) server on loopback that records every
request and answers from a script (statuses, redirects, slow or endless answers)."""

from __future__ import annotations

import datetime
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Answer:
    """One scripted answer. ``delay_s`` waits before answering; ``endless`` streams a body
    that never ends; ``drip_s`` sends it one byte at a time, this far apart."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay_s: float = 0.0
    endless: bool = False
    drip_s: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class Receiver:
    """Answers requests from ``script`` in order, then with ``then`` forever; over TLS
    when given a server context (``server_names`` then records the SNI names it saw). It
    listens on ``host`` (any loopback address)."""

    def __init__(
        self,
        script: Iterable[int | Answer] = (),
        then: int | Answer = 200,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ):
        self.host = host
        self._script = [a if isinstance(a, Answer) else Answer(a) for a in script]
        self._then = then if isinstance(then, Answer) else Answer(then)
        self._lock = threading.Lock()
        self.closing = threading.Event()
        self.requests: list[Received] = []
        self.server_names: list[str | None] = []
        self._server = ThreadingHTTPServer((host, 0), _Handler)
        self._server.daemon_threads = True
        self._server.receiver = self  # type: ignore[attr-defined]
        self.scheme = "http"
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/hook"

    def take(self, received: Received) -> Answer:
        with self._lock:
            self.requests.append(received)
            return self._script.pop(0) if self._script else self._then

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"receiver got {len(self.requests)} requests, expected {count}")
            time.sleep(0.01)
        return list(self.requests)

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()  # ends slow and endless answers
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def receiver(
    script: Iterable[int | Answer] = (), then: int | Answer = 200, host: str = "127.0.0.1"
) -> Iterator[Receiver]:
    server = Receiver(script, then, host=host).start()
    try:
        yield server
    finally:
        server.close()


@contextmanager
def tls_receiver(folder: Path, name: str) -> Iterator[tuple[Receiver, ssl.SSLContext]]:
    """An https receiver whose certificate names ``name`` (from a test CA), and a client
    context that trusts that CA."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("raypipe test CA", ca_key, ca_key, None, is_ca=True)
    leaf = _certificate(name, key, ca_key, ca, is_ca=False)
    ca_file, chain_file, key_file = (
        folder / f"{name}-{part}.pem" for part in ("ca", "cert", "key")
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(chain_file, key_file)
    server = Receiver(tls=server_side).start()
    try:
        yield server, ssl.create_default_context(cafile=str(ca_file))
    finally:
        server.close()


def _certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    is_ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    )
    if is_ca:
        builder = builder.add_extension(
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
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        receiver: Receiver = self.server.receiver  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        answer = receiver.take(Received(self.path, headers, body))
        if answer.delay_s and receiver.closing.wait(answer.delay_s):
            return
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if answer.endless or answer.drip_s:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self._stream(receiver, answer)
                return
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading, as it may

    def _stream(self, receiver: Receiver, answer: Answer) -> None:
        chunk = b"x" if answer.drip_s else b"x" * 65536
        while not receiver.closing.is_set():
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            if answer.drip_s:
                receiver.closing.wait(answer.drip_s)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read ``requests`` instead."""
