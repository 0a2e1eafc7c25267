"""The pub/sub reader's endpoint (`pubsub.Endpoint`): the URL it reads, and the connection's
opening (AUTH, then SUBSCRIBE) against a fake server on a local socket (no Redis)."""

from __future__ import annotations

import asyncio

import hiredis
import pytest

from dash_ray.queues.pubsub import Endpoint

pytestmark = pytest.mark.unit


def test_the_endpoint_of_a_url() -> None:
    plain = Endpoint.of("redis://example:7000/0")
    assert (plain.host, plain.port, plain.username, plain.password, plain.ssl) == ("example", 7000, None, None, None)
    auth = Endpoint.of("rediss://us%3Aer:p%40ss@10.0.0.1")
    assert (auth.host, auth.port, auth.username, auth.password) == ("10.0.0.1", 6379, "us:er", "p@ss")
    assert auth.ssl is not None
    assert Endpoint.of("redis://:pw@").host == "127.0.0.1" and Endpoint.of("redis://:pw@").username is None
    with pytest.raises(ValueError, match="unsupported Redis URL scheme"):
        Endpoint.of("unix:///tmp/redis.sock")


async def _serve(answer: bytes) -> tuple[asyncio.Server, int, list[list[str]]]:
    """A server that answers the first command with `answer` and records the commands it gets."""
    got: list[list[str]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader(encoding="utf-8")
        while data := await reader.read(4096):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                got.append(command)
                if len(got) == 1:
                    writer.write(answer)
                    await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], got


async def _wait_for(check: list[list[str]], n: int) -> None:
    async def poll() -> None:
        while len(check) < n:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), 5)


async def test_opening_authenticates_then_subscribes_the_channels_held() -> None:
    server, port, got = await _serve(b"+OK\r\n")
    try:
        _reader, writer, _parser = await Endpoint.of(f"redis://bob:pw@127.0.0.1:{port}").open({"b", "a"})
        await _wait_for(got, 2)
        assert got == [["AUTH", "bob", "pw"], ["SUBSCRIBE", "a", "b"]]
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_opening_with_no_channels_sends_nothing_and_a_refused_auth_raises() -> None:
    server, port, got = await _serve(b"-WRONGPASS invalid username-password pair\r\n")
    try:
        _reader, writer, _parser = await Endpoint.of(f"redis://127.0.0.1:{port}").open(())
        writer.close()
        with pytest.raises(ConnectionError, match="AUTH failed"):
            await Endpoint.of(f"redis://:bad@127.0.0.1:{port}").open({"c"})
        await _wait_for(got, 1)
        assert got == [["AUTH", "bad"]]  # no SUBSCRIBE after a refusal
    finally:
        server.close()
        await server.wait_closed()
