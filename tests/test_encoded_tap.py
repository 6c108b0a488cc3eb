"""Pins `rtc.encoded_tap` (the seam into aiortc's private receiver internals) against the installed
aiortc, with real RTCPeerConnections on loopback: a publisher encodes a moving picture (VP8) and a sine
(Opus), a subscriber taps its receivers. Nothing here reaches beyond 127.0.0.1 (no STUN, host candidates
pinned to loopback)."""
from __future__ import annotations

import asyncio
import logging
import queue
import socket
from fractions import Fraction
from typing import Any, Callable

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
)

from rtc import RtcError
from rtc.encoded_tap import (
    OPUS_FMTP,
    TapError,
    ice_receive_buffer,
    opus_fec_negotiate,
    receiver_audio_passthrough,
    video_start_bitrate_negotiate,
    receiver_estimator_off,
    receiver_request_keyframe,
    receiver_tap,
)
from recorder.writer import TrackWriter, vp8_keyframe_size

pytestmark = pytest.mark.once  # pure media: the deployment mode does not matter

WIDTH, HEIGHT, FPS = 320, 240, 30
VIDEO_CLOCK = 90_000
VIDEO_TICKS = VIDEO_CLOCK // FPS  # RTP ticks between two published frames
AUDIO_RATE = 48_000
AUDIO_SAMPLES = AUDIO_RATE // 50  # 20 ms
TIMEOUT = 10.0  # generous: a loaded machine must not fail these, they normally take well under a second


# ---- the publisher's media ----

class _PacedTrack(MediaStreamTrack):
    """A source that hands out its n-th frame no earlier than n periods after its first."""

    period = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._start: float | None = None

    async def _next_index(self) -> int:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self.count * self.period - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self.count += 1
        return self.count - 1


class PatternVideoTrack(_PacedTrack):
    """320x240 at 30 fps: colour ramps with a white square moving over them."""

    kind = "video"
    period = 1 / FPS

    def __init__(self) -> None:
        super().__init__()
        y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
        self._base = np.stack(
            [(x * 255 // WIDTH), (y * 255 // HEIGHT), np.full_like(x, 96)], axis=-1
        ).astype(np.uint8)

    async def recv(self) -> av.VideoFrame:
        n = await self._next_index()
        picture = self._base.copy()
        left, top = (n * 6) % (WIDTH - 48), (n * 3) % (HEIGHT - 48)
        picture[top : top + 48, left : left + 48] = 255
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts = n * VIDEO_TICKS
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        return frame


class SineAudioTrack(_PacedTrack):
    """20 ms frames of a 440 Hz sine, s16 mono 48 kHz."""

    kind = "audio"
    period = AUDIO_SAMPLES / AUDIO_RATE

    async def recv(self) -> av.AudioFrame:
        n = await self._next_index()
        t = (np.arange(AUDIO_SAMPLES) + n * AUDIO_SAMPLES) / AUDIO_RATE
        samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = n * AUDIO_SAMPLES
        frame.time_base = Fraction(1, AUDIO_RATE)
        return frame


# ---- a publisher and a subscriber connected in-process ----

def _ice_config() -> RTCConfiguration:
    # An explicit empty server list: aiortc would otherwise reach for a public STUN server.
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def _only(kind: str, mime_type: str) -> list[Any]:
    codecs = [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() == mime_type.lower()]
    assert codecs, f"aiortc offers no {mime_type}"
    return codecs


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice gathers host candidates on every interface but loopback: offer 127.0.0.1 only (for this
    test), so the two connections meet on loopback whatever the machine's interfaces are."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class Call:
    """Publisher offers (video, optionally audio, send-only), subscriber answers. `offer()` stops after
    the subscriber applied the offer: its receivers exist but nothing is connected (the place where
    `StageSubscriber` taps). `answer()` completes the negotiation; media then flows."""

    def __init__(self, *, audio: bool = True) -> None:
        self.video_source = PatternVideoTrack()
        self.audio_source = SineAudioTrack() if audio else None
        self.pub: RTCPeerConnection | None = None
        self.sub: RTCPeerConnection | None = None
        self.receivers: dict[str, RTCRtpReceiver] = {}

    async def __aenter__(self) -> Call:
        self.pub = RTCPeerConnection(_ice_config())
        self.sub = RTCPeerConnection(_ice_config())
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.pub.close()
        finally:
            await self.sub.close()

    async def offer(self) -> dict[str, RTCRtpReceiver]:
        video = self.pub.addTransceiver(self.video_source, direction="sendonly")
        video.setCodecPreferences(_only("video", "video/VP8"))
        if self.audio_source is not None:
            audio = self.pub.addTransceiver(self.audio_source, direction="sendonly")
            audio.setCodecPreferences(_only("audio", "audio/opus"))
        await self.pub.setLocalDescription(await self.pub.createOffer())  # candidates gathered by now
        await self.sub.setRemoteDescription(self.pub.localDescription)
        self.receivers = {t.kind: t.receiver for t in self.sub.getTransceivers()}
        assert set(self.receivers) == ({"video", "audio"} if self.audio_source else {"video"})
        return self.receivers

    async def answer(self) -> None:
        await self.sub.setLocalDescription(await self.sub.createAnswer())
        await self.pub.setRemoteDescription(self.sub.localDescription)

    def video_sender(self) -> RTCRtpSender:
        return next(t.sender for t in self.pub.getTransceivers() if t.kind == "video")


# ---- helpers ----

class Tapped:
    """An `on_frame` consumer that keeps everything it is handed."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes, int, int]] = []

    def __call__(self, codec: str, data: bytes, timestamp: int, clock_rate: int) -> None:
        self.frames.append((codec, data, timestamp, clock_rate))

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def timestamps(self) -> list[int]:
        return [f[2] for f in self.frames]

    def keyframe_indexes(self, start: int = 0) -> list[int]:
        return [i for i, f in enumerate(self.frames) if i >= start and _is_vp8_keyframe(f[1])]


def _is_vp8_keyframe(data: bytes) -> bool:
    return bool(data) and data[0] & 1 == 0  # RFC 6386 9.1: P bit clear


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class Decoded:
    """Reads a receiving track's decoded frames in the background."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.frames: list[Any] = []
        self._task = asyncio.ensure_future(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        while True:
            self.frames.append(await track.recv())

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def no_frame_within(track: MediaStreamTrack, seconds: float) -> bool:
    task = asyncio.ensure_future(track.recv())
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return not done


def _assert_vp8_stream(frames: list[tuple[str, bytes, int, int]]) -> None:
    assert {f[0] for f in frames} == {"vp8"}
    assert {f[3] for f in frames} == {VIDEO_CLOCK}
    assert all(isinstance(f[1], bytes) and f[1] for f in frames)
    timestamps = [f[2] for f in frames]
    assert timestamps[0] == 0
    # Each frame is handed over once, whole, in order ...
    assert all(a < b for a, b in zip(timestamps, timestamps[1:])), timestamps
    # ... at the published pts shifted to start at 0, give or take aiortc's rounding: PyAV's encode()
    # rebases the frame to the encoder's 1/1000000 time base and aiortc converts that back to 90 kHz
    # by truncation, so 3000 (1/30 s) goes out as 2999.
    assert all(round(ts / VIDEO_TICKS) * VIDEO_TICKS - ts in (0, 1) for ts in timestamps), timestamps


# ---- the tests ----

@pytest.mark.slow
async def test_tap_without_decoding_delivers_encoded_vp8_and_opus_and_decodes_nothing(loopback_only: None) -> None:
    video, audio = Tapped(), Tapped()
    async with Call() as call:
        receivers = await call.offer()
        receiver_tap(receivers["video"], on_frame=video, decode=False)
        receiver_tap(receivers["audio"], on_frame=audio, decode=False)
        await call.answer()
        await wait_until(lambda: len(video) >= 30 and len(audio) >= 25, "30 video and 25 audio frames")

        # Nothing reaches the decoders, so the tracks never yield a frame.
        quiet = await asyncio.gather(
            no_frame_within(receivers["video"].track, 1.5), no_frame_within(receivers["audio"].track, 1.5)
        )
        assert quiet == [True, True]
        assert len(video) > 30  # while frames kept arriving at the tap

    frames = list(video.frames)
    _assert_vp8_stream(frames)
    assert _is_vp8_keyframe(frames[0][1])  # loopback loses nothing: the very first frame is the keyframe
    assert vp8_keyframe_size(frames[0][1]) == (WIDTH, HEIGHT)
    assert not _is_vp8_keyframe(frames[1][1])

    packets = list(audio.frames)
    assert {p[0] for p in packets} == {"opus"}
    assert {p[3] for p in packets} == {AUDIO_RATE}
    assert all(isinstance(p[1], bytes) and p[1] for p in packets)
    timestamps = [p[2] for p in packets]
    assert timestamps[0] == 0
    assert all(b - a > 0 and (b - a) % AUDIO_SAMPLES == 0 for a, b in zip(timestamps, timestamps[1:]))
    # Opus packets as sent: decodable by a fresh decoder into 20 ms at 48 kHz.
    decoder = av.CodecContext.create("opus", "r")
    decoded = [f for p in packets[:10] for f in decoder.decode(av.Packet(p[1]))]
    assert decoded and all(f.sample_rate == AUDIO_RATE and f.samples == AUDIO_SAMPLES for f in decoded)


@pytest.mark.slow
async def test_tap_with_decoding_feeds_both_the_consumer_and_the_track(loopback_only: None) -> None:
    video, audio = Tapped(), Tapped()
    async with Call() as call:
        receivers = await call.offer()
        receiver_tap(receivers["video"], on_frame=video, decode=True)
        receiver_tap(receivers["audio"], on_frame=audio, decode=True)
        await call.answer()
        video_frames = [await asyncio.wait_for(receivers["video"].track.recv(), TIMEOUT) for _ in range(10)]
        audio_frames = [await asyncio.wait_for(receivers["audio"].track.recv(), TIMEOUT) for _ in range(10)]
        tapped_video, tapped_audio = set(video.timestamps), set(audio.timestamps)

    assert all((f.width, f.height) == (WIDTH, HEIGHT) for f in video_frames)
    # Decoded frames carry the RTP timestamp the tap saw (aiortc sets pts from it).
    assert [f.pts for f in video_frames] == video.timestamps[:10]
    assert {f.pts for f in video_frames} <= tapped_video
    assert all(f.sample_rate == AUDIO_RATE for f in audio_frames)
    assert len(tapped_audio) >= 10
    _assert_vp8_stream(video.frames)


@pytest.mark.slow
async def test_tapped_vp8_is_bit_exact_and_records_to_webm_without_reencoding(loopback_only: None, tmp_path) -> None:
    path = tmp_path / "video.webm"
    writer = TrackWriter(path, kind="video", codec="vp8", clock_rate=VIDEO_CLOCK)
    video = Tapped()
    recording = True

    def on_frame(codec: str, data: bytes, timestamp: int, clock_rate: int) -> None:
        if recording:  # as a recorder does: hand off to the writer's thread, on the loop's thread
            video(codec, data, timestamp, clock_rate)
            writer.write(data, timestamp=timestamp)

    reader: Decoded | None = None
    try:
        async with Call(audio=False) as call:
            receivers = await call.offer()
            receiver_tap(receivers["video"], on_frame=on_frame, decode=True)
            await call.answer()
            reader = Decoded(receivers["video"].track)
            await wait_until(lambda: len(video) >= 45, "45 tapped frames")
            recording = False  # same thread as on_frame: nothing is tapped or written after this
            tapped = list(video.frames)
            wanted = {f[2] for f in tapped}
            await wait_until(
                lambda: wanted <= {f.pts for f in reader.frames}, "aiortc's decoder to catch up with the tap"
            )
            await reader.stop()
    finally:
        if reader is not None:
            await reader.stop()
        stats = await asyncio.to_thread(writer.close)

    first_key = next(i for i, f in enumerate(tapped) if _is_vp8_keyframe(f[1]))
    recorded = tapped[first_key:]
    by_pts = {f.pts: f for f in reader.frames}

    # A fresh FFmpeg VP8 decoder turns every tapped payload into a whole 320x240 picture, the very
    # picture aiortc's own (libvpx) decoder made of it.
    decoder = av.CodecContext.create("vp8", "r")
    fresh = {}
    for _, data, timestamp, _ in recorded:
        packet = av.Packet(data)
        packet.pts = timestamp
        packet.time_base = Fraction(1, VIDEO_CLOCK)
        fresh.update((f.pts, f) for f in decoder.decode(packet))
    fresh.update((f.pts, f) for f in decoder.decode(None))
    assert sorted(fresh) == [f[2] for f in recorded]
    for pts, frame in fresh.items():
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
        theirs = by_pts[pts]
        assert (theirs.width, theirs.height) == (WIDTH, HEIGHT)
        assert np.array_equal(frame.to_ndarray(format="yuv420p"), theirs.to_ndarray(format="yuv420p")), pts

    # The recording holds exactly the tapped frames, byte for byte, from the first keyframe on.
    assert stats.error == "" and stats.opened
    assert stats.frames == len(recorded) and stats.dropped == 0
    assert (stats.width, stats.height) == (WIDTH, HEIGHT)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "vp8"
        assert (stream.codec_context.width, stream.codec_context.height) == (WIDTH, HEIGHT)
        payloads = [bytes(p) for p in container.demux(stream) if p.size]
    assert payloads == [f[1] for f in recorded]
    with av.open(str(path)) as container:
        pictures = list(container.decode(video=0))
    assert len(pictures) == len(recorded)
    assert all((p.width, p.height) == (WIDTH, HEIGHT) for p in pictures)


@pytest.mark.slow
async def test_request_keyframe_sends_pli_and_a_new_keyframe_arrives(loopback_only: None) -> None:
    video = Tapped()
    async with Call(audio=False) as call:
        receivers = await call.offer()
        # Not connected: no SSRC heard yet, nothing to ask.
        assert await receiver_request_keyframe(receivers["video"]) is False

        # Observe the publisher's side: aiortc's sender answers a PLI (or FIR) with `_send_keyframe`, and
        # nothing else calls it. This tells the PLI's keyframe from the ones aiortc makes of its own
        # accord: it restarts its VP8 encoder (a keyframe) whenever the subscriber's REMB moves the
        # target bitrate by over 10%, which on loopback happens a few seconds in.
        sender = call.video_sender()
        forced: list[float] = []
        send_keyframe = sender._send_keyframe

        def spy() -> None:
            forced.append(asyncio.get_running_loop().time())
            send_keyframe()

        sender._send_keyframe = spy

        receiver_tap(receivers["video"], on_frame=video, decode=False)
        await call.answer()
        await wait_until(lambda: len(video) >= 20, "20 tapped frames")
        assert forced == []  # a clean loopback stream: the receiver asked for nothing by itself

        for round_ in range(1, 3):
            start = len(video)
            assert await receiver_request_keyframe(receivers["video"]) is True
            await wait_until(lambda: len(forced) >= round_, "the PLI to reach the sender", timeout=5.0)
            await wait_until(lambda: video.keyframe_indexes(start), "a keyframe after the PLI", timeout=5.0)
            data = video.frames[video.keyframe_indexes(start)[0]][1]
            assert vp8_keyframe_size(data) == (WIDTH, HEIGHT)
        assert len(forced) == 2  # one PLI per request: the receiver hears one SSRC
    _assert_vp8_stream(video.frames)


@pytest.mark.slow
async def test_tapping_twice_delivers_once(loopback_only: None) -> None:
    video, ignored = Tapped(), Tapped()
    async with Call(audio=False) as call:
        receivers = await call.offer()
        receiver_tap(receivers["video"], on_frame=video, decode=True)
        receiver_tap(receivers["video"], on_frame=video, decode=True)
        # The first tap stays in place: a later call changes neither the consumer nor `decode`.
        receiver_tap(receivers["video"], on_frame=ignored, decode=False)
        await call.answer()
        reader = Decoded(receivers["video"].track)
        try:
            await wait_until(lambda: len(video) >= 15 or len(ignored) > 0, "15 tapped frames")
            assert len(ignored) == 0
            await wait_until(lambda: len(reader.frames) >= 15, "15 decoded frames")
        finally:
            await reader.stop()
    _assert_vp8_stream(video.frames)  # strictly increasing: no frame handed over twice
    pts = [f.pts for f in reader.frames]
    assert pts == video.timestamps[: len(pts)]  # and the decoder got each frame once


@pytest.mark.slow
async def test_the_receive_buffer_of_a_connections_sockets_grows_and_media_still_flows(loopback_only: None) -> None:
    rmem_max = int(open("/proc/sys/net/core/rmem_max").read())
    wanted = 1024 * 1024
    video = Tapped()
    async with Call(audio=True) as call:
        receivers = await call.offer()
        receiver_tap(receivers["video"], on_frame=video, decode=False)
        await call.answer()
        before = [p.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                  for p in call.sub.getTransceivers()[0].receiver.transport.transport.iceGatherer._connection._protocols]
        granted = ice_receive_buffer(call.sub, size=wanted)
        assert granted and len(granted) == len(before)  # bundled: every socket of the one ICE transport
        # Linux reports twice what it grants (bookkeeping overhead), capped by net.core.rmem_max.
        assert all(g >= min(wanted, rmem_max) for g in granted)
        assert ice_receive_buffer(call.sub, size=wanted) == granted  # idempotent
        await wait_until(lambda: len(video) >= 15, "15 frames after the change")


def test_the_receive_buffer_seam_refuses_an_ice_transport_it_does_not_know() -> None:
    class Gatherer:
        _connection = None

    class Ice:
        iceGatherer = Gatherer()

    class Dtls:
        transport = Ice()

    class End:
        transport = Dtls()

    class Transceiver:
        receiver = sender = End()

    class Pc:
        def getTransceivers(self) -> list[Any]:
            return [Transceiver()]

    with pytest.raises(TapError, match="aiortc/aioice versions"):
        ice_receive_buffer(Pc(), size=1 << 20)


def test_tap_refuses_an_object_without_aiortcs_decoder_queue() -> None:
    with pytest.raises(TapError, match="aiortc version"):
        receiver_tap(object(), on_frame=Tapped(), decode=False)

    class Moved:  # the attribute exists but is no longer a queue.Queue
        _RTCRtpReceiver__decoder_queue = asyncio.Queue

    with pytest.raises(TapError, match="aiortc version"):
        receiver_tap(Moved(), on_frame=Tapped(), decode=True)
    assert issubclass(TapError, RtcError)


async def test_the_receive_side_estimator_can_be_turned_off_on_the_pinned_aiortc() -> None:
    from aiortc import RTCRtpReceiver
    from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport

    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    receiver = RTCRtpReceiver("video", transport)
    assert getattr(receiver, "_RTCRtpReceiver__remote_bitrate_estimator") is not None
    receiver_estimator_off(receiver)
    receiver_estimator_off(receiver)  # idempotent
    assert getattr(receiver, "_RTCRtpReceiver__remote_bitrate_estimator") is None
    with pytest.raises(TapError, match="aiortc version"):
        receiver_estimator_off(object())


@pytest.mark.slow
async def test_a_failing_consumer_does_not_break_the_receive_path(
    loopback_only: None, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def on_frame(codec: str, data: bytes, timestamp: int, clock_rate: int) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("consumer bug")

    caplog.set_level(logging.ERROR, logger="classcast.egress")
    async with Call(audio=False) as call:
        receivers = await call.offer()
        receiver_tap(receivers["video"], on_frame=on_frame, decode=True)
        await call.answer()
        decoded = [await asyncio.wait_for(receivers["video"].track.recv(), TIMEOUT) for _ in range(15)]
        assert call.sub.connectionState == "connected"
    assert all((f.width, f.height) == (WIDTH, HEIGHT) for f in decoded)
    assert calls >= 15
    failures = [r for r in caplog.records if r.name == "classcast.egress" and "consumer failed" in r.getMessage()]
    assert len(failures) == calls
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in failures)


# ---- the decoder backlog guard (a queue.Queue standing in for the receiver's, as aiortc fills it) ----

class _Codec:
    def __init__(self, name: str, clock_rate: int) -> None:
        self.name, self.clockRate = name, clock_rate


class _Frame:
    def __init__(self, data: bytes, timestamp: int) -> None:
        self.data, self.timestamp = data, timestamp


class _Receiver:
    def __init__(self) -> None:
        self._RTCRtpReceiver__decoder_queue: queue.Queue = queue.Queue()

    @property
    def waiting(self) -> list[Any]:
        return list(self._RTCRtpReceiver__decoder_queue.queue)


VP8 = _Codec("VP8", 90_000)
OPUS = _Codec("opus", 48_000)
KEY, DELTA = b"\x10\x02\x00\x9d\x01\x2a", b"\x11\x00"


def test_a_decoder_that_falls_behind_skips_to_the_next_keyframe_and_asks_for_one() -> None:
    receiver, asked, seen = _Receiver(), [], Tapped()
    receiver_tap(receiver, on_frame=seen, decode=True, max_backlog=3, on_backlog=lambda: asked.append(1))
    put = receiver._RTCRtpReceiver__decoder_queue.put
    for ts in range(3):  # the decoder takes nothing: three frames wait
        put((VP8, _Frame(KEY if ts == 0 else DELTA, ts)))
    assert [f.timestamp for _, f in receiver.waiting] == [0, 1, 2] and not asked
    put((VP8, _Frame(DELTA, 3)))  # a fourth finds the limit reached
    assert receiver.waiting == [] and asked == [1]  # what waited is gone; a keyframe is asked for
    put((VP8, _Frame(DELTA, 4)))  # deltas cannot decode without what was dropped
    assert receiver.waiting == [] and asked == [1]
    put((VP8, _Frame(KEY, 5)))
    put((VP8, _Frame(DELTA, 6)))
    assert [f.timestamp for _, f in receiver.waiting] == [5, 6]  # decoding resumes at the keyframe
    assert len(seen) == 7  # the consumer still saw every frame


def test_a_keyframe_that_finds_the_decoder_behind_replaces_what_waited() -> None:
    receiver, asked = _Receiver(), []
    receiver_tap(receiver, on_frame=None, decode=True, max_backlog=2, on_backlog=lambda: asked.append(1))
    put = receiver._RTCRtpReceiver__decoder_queue.put
    for ts in range(2):
        put((VP8, _Frame(DELTA, ts)))
    put((VP8, _Frame(KEY, 2)))
    assert [f.timestamp for _, f in receiver.waiting] == [2] and not asked


def test_audio_behind_drops_its_oldest_frame_only_and_the_stop_signal_is_never_dropped() -> None:
    receiver = _Receiver()
    receiver_tap(receiver, on_frame=None, decode=True, max_backlog=2)
    put = receiver._RTCRtpReceiver__decoder_queue.put
    for ts in range(4):
        put((OPUS, _Frame(b"\xfc", ts * 960)))
    assert [f.timestamp for _, f in receiver.waiting] == [1920, 2880]
    stopping = _Receiver()
    receiver_tap(stopping, on_frame=None, decode=True, max_backlog=1)
    stopping._RTCRtpReceiver__decoder_queue.put(None)  # the receiver stops; its decoder has not seen it yet
    stopping._RTCRtpReceiver__decoder_queue.put((OPUS, _Frame(b"\xfc", 0)))  # a late frame finds the limit
    assert stopping.waiting[0] is None  # the stop signal is never what goes


def test_without_decoding_or_a_limit_nothing_is_dropped() -> None:
    for kwargs in ({"decode": True}, {"decode": True, "max_backlog": 0}):
        receiver = _Receiver()
        receiver_tap(receiver, on_frame=None, **kwargs)
        for ts in range(50):
            receiver._RTCRtpReceiver__decoder_queue.put((VP8, _Frame(DELTA, ts)))
        assert len(receiver.waiting) == 50


# ---- audio as it arrives, Opus FEC ----

class _Packet:
    def __init__(self, seq: int, timestamp: int) -> None:
        self.sequence_number, self.timestamp, self._data = seq, timestamp, bytes([seq & 0xFF])


def test_audio_passes_through_as_it_arrives_and_drops_duplicates_and_late_packets() -> None:
    from rtc.encoded_tap import _PassThrough

    buffer = _PassThrough()
    out = []
    for seq in (65533, 65534, 0, 65535, 1, 1, 3, 2, 4):  # a wrap, a reordering, a duplicate, a loss (2 late)
        pli, frame = buffer.add(_Packet(seq, seq * 960))
        assert pli is False
        out.append(None if frame is None else frame.data[0])
    # every packet newer than the newest passed on goes at once, the hole at 65535 (then 2) does not hold it
    assert out == [253, 254, 0, None, 1, None, 3, None, 4]
    assert buffer.dropped == 3


async def test_the_audio_passthrough_replaces_the_jitter_buffer_of_the_pinned_aiortc() -> None:
    from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport

    from rtc.encoded_tap import _PassThrough

    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    audio, video = RTCRtpReceiver("audio", transport), RTCRtpReceiver("video", transport)
    receiver_audio_passthrough(audio)
    receiver_audio_passthrough(audio)  # idempotent
    assert isinstance(getattr(audio, "_RTCRtpReceiver__jitter_buffer"), _PassThrough)
    with pytest.raises(TapError, match="audio"):
        receiver_audio_passthrough(video)  # a video frame spans several packets
    with pytest.raises(TapError):
        receiver_audio_passthrough(object())


@pytest.mark.slow
async def test_a_lost_audio_packet_holds_nothing_back(loopback_only: None) -> None:
    """One Opus packet lost on the way: with the pass-through every later packet reaches the tap in the
    very call that received it; aiortc's own jitter buffer holds them behind the hole."""

    async def run(passthrough: bool) -> tuple[list[int], int]:
        tapped, arrived = Tapped(), 0
        behind: list[int] = []  # packets arrived but not yet handed on, seen at each tapped frame
        async with Call(audio=True) as call:
            receivers = await call.offer()
            receiver = receivers["audio"]

            def on_frame(*frame: Any) -> None:
                tapped(*frame)
                behind.append(arrived - len(tapped))

            receiver_tap(receiver, on_frame=on_frame, decode=False)
            if passthrough:
                receiver_audio_passthrough(receiver)
            original = receiver._handle_rtp_packet

            async def handle(packet: Any, arrival_time_ms: int) -> None:
                nonlocal arrived
                if not first:
                    first.append(packet.sequence_number)
                elif packet.sequence_number == (first[0] + 10) % 65536:
                    return  # lost on the way
                arrived += 1
                await original(packet, arrival_time_ms)

            first: list[int] = []
            receiver._handle_rtp_packet = handle
            await call.answer()
            await wait_until(lambda: arrived >= 40, "40 audio packets")
        return behind, arrived

    behind, _ = await run(passthrough=True)
    assert behind and set(behind) == {0}
    held, _ = await run(passthrough=False)
    assert max(held) >= 1  # aiortc's buffer always keeps packets waiting (and more behind a hole)


async def test_opus_is_offered_with_inband_fec() -> None:
    opus_fec_negotiate()
    opus_fec_negotiate()  # idempotent
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        transceiver = pc.addTransceiver("audio", direction="recvonly")
        transceiver.setCodecPreferences(_only("audio", "audio/opus"))
        await pc.setLocalDescription(await pc.createOffer())
        fmtp = [line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=fmtp:")]
        assert fmtp and all(f"{k}={v}" in fmtp[0] for k, v in OPUS_FMTP.items()), fmtp
    finally:
        await pc.close()


async def test_browsers_are_told_where_to_start_their_video_estimate() -> None:
    try:
        video_start_bitrate_negotiate(1000)
        video_start_bitrate_negotiate(1000)  # idempotent
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            transceiver = pc.addTransceiver("video", direction="recvonly")
            transceiver.setCodecPreferences(_only("video", "video/VP8"))
            await pc.setLocalDescription(await pc.createOffer())
            fmtp = [line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=fmtp:")]
            assert any("x-google-start-bitrate=1000" in line for line in fmtp), fmtp
        finally:
            await pc.close()
    finally:
        video_start_bitrate_negotiate(0)  # other tests build their preferences from the plain list
