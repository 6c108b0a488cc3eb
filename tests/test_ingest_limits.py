"""The RTMP ingest's connection limits, with real sockets on loopback (clients bind 127.0.0.x source
addresses to look like different hosts) and real ffmpeg as the publisher with a valid key:
not-yet-authorised sockets live in a small pool of their own, per address and in all, and can make
the server hold only a few KiB; a deadline closes what never publishes; every refusal has a reason."""
from __future__ import annotations

import asyncio
import struct

import pytest

from hls_packager import amf0
from hls_packager.config import PackagerConfig
from hls_packager.rtmp_chunks import COMMAND_AMF0, DATA_AMF0, SET_CHUNK_SIZE, WINDOW_ACK_SIZE, ChunkWriter, Message, control
from hls_packager.server import IngestServer, client_address
from tests.test_hls_ingest import RawClient, Recorder, load, publish_ffmpeg, resolve_key

pytestmark = pytest.mark.once  # the packager alone: the deployment mode does not matter


class Events(Recorder):
    def on_connection_refused(self, address, reason):
        self.calls.append(("conn_refused", (address, reason)))


async def start(tmp_path, **limits) -> IngestServer:
    srv = IngestServer(PackagerConfig(port=0, output_dir=tmp_path / "hls", **limits), resolve_key=resolve_key, events=Events())
    await srv.start()
    return srv


async def idle_socket(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def open_from(port: int, source: str) -> RawClient:
    client = RawClient(port)
    client.reader, client.writer = await idle_socket(port, source)
    client.writer.write(b"\x03" + bytes(1536))
    s0s1s2 = await client.reader.readexactly(1 + 2 * 1536)
    client.writer.write(s0s1s2[1:1537])
    return client


async def wait_for_stats(srv: IngestServer, check, timeout: float = 10.0) -> dict:
    async def poll():
        while not check(srv.stats()):
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)
    return srv.stats()


async def test_idle_sockets_do_not_stop_a_publisher_with_a_valid_key(tmp_path):
    # Before: one limit of 2 * max_publishers + 16 = 20 sockets, idle ones included, so 20 idle
    # sockets (alive for the 10 s handshake deadline, and reopened) locked every publisher out.
    srv = await start(tmp_path, max_publishers=2, max_pending=8, max_pending_per_ip=4)
    events: Events = srv.events
    try:
        idle = [await idle_socket(srv.port) for _ in range(24)]  # the publisher's own address
        idle += [await idle_socket(srv.port, f"127.0.0.{2 + i % 6}") for i in range(18)]  # and 6 others
        stats = await wait_for_stats(srv, lambda s: s["connections"] <= 8)
        assert stats["pending"] == 8 and stats["publishers"] == []
        assert events.of("conn_refused").count(("127.0.0.1", "pending_replaced")) >= 20

        rc, err = await publish_ffmpeg(srv.port, "good-key", 3)
        assert rc == 0, err
        await wait_for_stats(srv, lambda s: ("end", ("class-1/session-1", "unpublished")) in events.calls)
        vod = load(tmp_path / "hls" / "class-1" / "session-1", "vod.m3u8")
        assert vod.is_endlist and len(vod.segments) >= 1  # keyframes far over the 4 KiB pre-auth cap went in
        assert srv.stats()["connections_refused_by_reason"]["pending_replaced"] >= 34
        for _, writer in idle:
            writer.close()
    finally:
        await srv.close()


async def test_an_address_at_its_limit_with_publishers_is_refused_and_others_are_not(tmp_path):
    srv = await start(tmp_path, max_connections_per_ip=1)
    events: Events = srv.events
    try:
        publisher = await open_from(srv.port, "127.0.0.3")
        assert await publisher.publish("good-key") == ["NetStream.Publish.Start"]
        assert srv.stats()["pending"] == 0  # an authorised publisher is not pending any more

        second = RawClient(srv.port)
        second.reader, second.writer = await idle_socket(srv.port, "127.0.0.3")
        assert await second.closed_by_server()
        assert ("127.0.0.3", "too_many_from_ip") in events.of("conn_refused")

        other = await open_from(srv.port, "127.0.0.4")  # another address still gets in
        assert await other.publish("back-key") == ["NetStream.Publish.Start"]
        assert sorted(p["folder"] for p in srv.stats()["publishers"]) == ["class-1/session-1", "class-2/session-5"]
        for client in (publisher, other):
            client.close()
    finally:
        await srv.close()


def connect_command() -> bytes:
    return ChunkWriter().encode(3, Message(COMMAND_AMF0, 0, 0, amf0.encode("connect", 1, {"app": "live"})))


def half_message(csid: int, declared: int, body: int) -> bytes:
    """A type-0 header declaring `declared` bytes, then `body` bytes of it in 128-byte chunks."""
    out = bytearray([csid, 0, 0, 0]) + declared.to_bytes(3, "big") + bytes([COMMAND_AMF0]) + bytes(4)
    for offset in range(0, body, 128):
        if offset:
            out.append(0xC0 | csid)
        out += b"x" * min(128, body - offset)
    return bytes(out)


async def test_a_client_before_publish_can_make_the_server_hold_only_a_few_kib(tmp_path):
    # Before: 8 MiB per message and 16 MiB half-received per socket, before any key was shown.
    srv = await start(tmp_path)
    events: Events = srv.events
    try:
        # A huge declared length: cut off at its header, nothing of it buffered.
        huge = await open_from(srv.port, "127.0.0.2")
        huge.writer.write(connect_command() + half_message(4, 8 * 1024 * 1024 - 1, 64 * 1024))
        assert await huge.closed_by_server()

        # Within the 4 KiB message cap but on two chunk streams: over the half-received cap, cut off.
        wide = await open_from(srv.port, "127.0.0.3")
        wide.writer.write(connect_command() + half_message(4, 4000, 8 * 128) + half_message(5, 4000, 25 * 128))
        assert await wide.closed_by_server()

        # Inside every cap: it stays, and what the server holds for it is a few KiB.
        small = await open_from(srv.port, "127.0.0.4")
        small.writer.write(connect_command() + half_message(4, 4000, 24 * 128))
        stats = await wait_for_stats(srv, lambda s: s["pending_buffered_bytes"] >= 24 * 128)
        assert stats["pending"] == 1 and stats["pending_buffered_bytes"] <= 4 * 1024

        # Many small well-formed messages: over the 16 KiB a client may send before publish, cut off.
        chatty = await open_from(srv.port, "127.0.0.5")
        ack = ChunkWriter().encode(2, control(WINDOW_ACK_SIZE, struct.pack(">I", 2_500_000)))
        chatty.writer.write(ack * (20 * 1024 // len(ack)))
        assert await chatty.closed_by_server()

        refused = [a for a in events.of("conn_refused") if a[1] == "pre_auth_limit"]
        assert sorted(refused) == [("127.0.0.2", "pre_auth_limit"), ("127.0.0.3", "pre_auth_limit"), ("127.0.0.5", "pre_auth_limit")]

        # After publish the publisher's limits apply: a 100 KB message (a keyframe might be) goes in.
        publisher = await open_from(srv.port, "127.0.0.6")
        big_chunks = ChunkWriter().encode(2, control(SET_CHUNK_SIZE, struct.pack(">I", 4096)))
        publisher.writer.write(big_chunks)
        assert await publisher.publish("good-key") == ["NetStream.Publish.Start"]
        writer = ChunkWriter()
        writer.chunk_size = 4096
        publisher.writer.write(writer.encode(6, Message(DATA_AMF0, 1, 0, amf0.encode("@setDataFrame", "onMetaData", {"x": "y" * 100_000}))))
        await publisher.writer.drain()
        await wait_for_stats(srv, lambda s: s["publishers"] and s["publishers"][0]["bytes_in"] > 100_000)
        assert srv.stats()["connections_refused_by_reason"].get("pre_auth_limit") == 3
        for client in (small, publisher):
            client.close()
    finally:
        await srv.close()


async def test_the_deadline_closes_sockets_that_do_not_publish_in_time(tmp_path):
    srv = await start(tmp_path, handshake_timeout_s=0.5)
    events: Events = srv.events
    try:
        silent = RawClient(srv.port)
        silent.reader, silent.writer = await idle_socket(srv.port)
        connected = await open_from(srv.port, "127.0.0.2")
        connected.writer.write(connect_command())  # connects, never publishes
        assert await silent.closed_by_server()
        assert await connected.closed_by_server()
        assert sorted(events.of("conn_refused")) == [("127.0.0.1", "auth_timeout"), ("127.0.0.2", "auth_timeout")]
        stats = await wait_for_stats(srv, lambda s: s["connections"] == 0)
        assert stats["pending"] == 0 and stats["connections_refused_by_reason"] == {"auth_timeout": 2}
    finally:
        await srv.close()


@pytest.mark.parametrize(
    "peer, address",
    [
        (("192.0.2.7", 5000), "192.0.2.7"),
        (("::ffff:192.0.2.7", 5000, 0, 0), "192.0.2.7"),
        (("2001:db8:1:2:aaaa::1", 5000, 0, 0), "2001:db8:1:2::/64"),
        (("fe80::1%eth0", 5000, 0, 2), "fe80::/64"),
        (None, "?"),
    ],
)
def test_limits_count_per_ipv4_address_and_per_ipv6_64(peer, address):
    assert client_address(peer) == address


def test_the_app_counts_and_logs_every_refused_connection(caplog, db):  # db: /metrics collectors read it
    from prometheus_client import REGISTRY

    from classroom.services.ingest import ingest_events

    def refused() -> float:
        return REGISTRY.get_sample_value("classcast_ingest_refused_total", {"reason": "pending_replaced"}) or 0.0

    before = refused()
    ingest_events().on_connection_refused("198.51.100.7", "pending_replaced")
    assert refused() == before + 1
    record = next(r for r in caplog.records if r.getMessage() == "RTMP connection refused")
    assert (record.address, record.reason) == ("198.51.100.7", "pending_replaced")
