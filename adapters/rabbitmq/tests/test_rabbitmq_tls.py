"""amqps://: CA verification, mutual TLS and verify=false, through a local TLS terminator
in front of the plain test broker (so no TLS listener has to be configured on RabbitMQ)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from messagebus_rabbitmq import RabbitMQTransport
from rmq_helpers import Inbox, message, queue

from messagebus import ConnectError, InvalidOption
from messagebus.transports import TransportURL

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")


def _make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    server_cert, server_key = _make_cert(d, "server")
    client_cert, client_key = _make_cert(d, "client")
    other_cert, _ = _make_cert(d, "other")
    return {
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
        "other_ca": other_cert,
    }


@contextlib.asynccontextmanager
async def tls_terminator(
    upstream: tuple[str, int], certs: dict[str, Path], *, client_ca: Path | None
) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 that forwards the decrypted stream to ``upstream``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs["server_cert"], certs["server_key"])
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(handle(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def amqps(rabbitmq_url: str, port: int, **query: str) -> RabbitMQTransport:
    parsed = TransportURL.parse(rabbitmq_url)
    url = TransportURL("amqps", (("127.0.0.1", port),), parsed.username, parsed.password, parsed.path, query)
    return RabbitMQTransport.from_url(url)


async def test_verified_tls_with_client_certificate_round_trip(
    rabbitmq_url: str, certs: dict[str, Path], name: str, admin
) -> None:
    admin.cleanup_later(queues=(name,))
    parsed = TransportURL.parse(rabbitmq_url)
    upstream = (parsed.host or "127.0.0.1", parsed.port or 5672)
    async with tls_terminator(upstream, certs, client_ca=certs["client_cert"]) as port:
        t = amqps(
            rabbitmq_url,
            port,
            cafile=str(certs["server_cert"]),
            certfile=str(certs["client_cert"]),
            keyfile=str(certs["client_key"]),
            connect_retries="0",
        )
        await t.connect()
        try:
            inbox = Inbox()
            consumer = await t.subscribe(queue(name), inbox, concurrency=1)
            await t.publish([message(queue(name), 1)])
            await inbox.wait_for(1)
            await consumer.stop(1)
        finally:
            await t.close()


async def test_untrusted_server_certificate_is_a_clear_connect_error(rabbitmq_url: str, certs: dict[str, Path]) -> None:
    parsed = TransportURL.parse(rabbitmq_url)
    upstream = (parsed.host or "127.0.0.1", parsed.port or 5672)
    async with tls_terminator(upstream, certs, client_ca=None) as port:
        t = amqps(rabbitmq_url, port, cafile=str(certs["other_ca"]), connect_retries="3", connect_timeout="5")
        with pytest.raises(ConnectError, match="TLS handshake") as info:
            await t.connect()
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) and "cafile" in str(info.value)
        assert info.value.__cause__ is not None
        assert (parsed.password or "guest") not in str(info.value).replace(f"{parsed.username}:", "")
        # verify=false accepts the same server (tests only).
        insecure = amqps(rabbitmq_url, port, verify="false", connect_retries="0")
        await insecure.connect()
        await insecure.close()


async def test_missing_client_certificate_is_refused(rabbitmq_url: str, certs: dict[str, Path]) -> None:
    parsed = TransportURL.parse(rabbitmq_url)
    upstream = (parsed.host or "127.0.0.1", parsed.port or 5672)
    async with tls_terminator(upstream, certs, client_ca=certs["client_cert"]) as port:
        t = amqps(rabbitmq_url, port, cafile=str(certs["server_cert"]), connect_retries="0", connect_timeout="5")
        with pytest.raises(ConnectError) as info:
            await t.connect()
        await t.close()
        # Refused by the TLS layer (or the peer closing on it): never retried as "unreachable".
        assert "1 attempt(s)" in str(info.value) or "TLS" in str(info.value)


async def test_unreadable_tls_files_fail_at_connect_with_the_file_named(certs: dict[str, Path], tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-cert.pem"
    bogus.write_text("not a certificate")
    t = RabbitMQTransport.from_url(TransportURL.parse(f"amqps://u:p@127.0.0.1:1/?cafile={bogus}"))
    with pytest.raises(ConnectError, match="TLS files"):
        await t.connect()
    with pytest.raises(InvalidOption, match="does not exist"):
        RabbitMQTransport.from_url(TransportURL.parse(f"amqps://u:p@h/?certfile={tmp_path / 'nope.pem'}"))
