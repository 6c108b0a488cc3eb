"""The program: the stage composed, mixed, encoded once and sent to every destination. With a quality
ladder (`ProgramConfig.renditions`) each lower video rung is the same composite scaled down (one reused
scaler per rung) and encoded once more on the same tick, with the same forced keyframes: one composite,
one audio mix and one encode per rung per tick, whatever the number of viewers.

Threads: the caller's (usually the asyncio loop's) only stores frames (`push_video` keeps the latest
per participant, `push_audio` appends to a bounded inbox); one program thread ticks on its own
monotonic clock at `fps` and, per tick, mixes the audio due, composes the video from the latest frames,
encodes both and offers the packets to the sinks; each sink has its own thread. A frozen or missing
input never stalls the program: its tile shows the last frame, then (after `stale_video_s`) a name card.

Timestamps come from the tick count: video pts = tick (1/fps), audio pts = samples (1/48000), so audio
and video never drift. If the thread falls behind, video ticks are skipped (counted in
`dropped_frames`) while audio stays continuous; a keyframe is forced whenever a keyframe boundary
(every `keyint_s`) was crossed, so HLS segments still start on time."""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Iterable

import av
from av.video.reformatter import VideoReformatter

from . import CompositorError
from .audio_mixer import SILENCE_DBOV, AudioMixer
from .config import LAYOUTS, ConfigError, Destination, Participant, ProgramConfig
from .encoder import AAC_FRAME_SAMPLES, EncodedPacket, ProgramEncoder
from .layout import Tile, layout_compute
from .sinks import DestinationSink
from .speaker import ActiveSpeakerDetector
from .video_mixer import LatestFrame, VideoMixer

__all__ = ["Program", "ProgramConfig", "Destination", "Participant"]

log = logging.getLogger("classcast.compositor")
STATS_WINDOW_S = 3.0
AUDIO_INBOX_FRAMES = 100  # per participant, ~2 s of 20 ms Opus frames: beyond that we are behind anyway


class Program:
    def __init__(
        self,
        config: ProgramConfig,
        destinations: Iterable[Destination] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()  # guards everything the caller's thread and the program thread share
        self._participants: tuple[Participant, ...] = ()
        self._latest: dict[int, LatestFrame] = {}
        self._audio_inbox: dict[int, collections.deque[av.AudioFrame]] = {}
        self._layout: tuple[str, int | None] = (config.layout, None)
        self._seq = 0
        self._encoder = ProgramEncoder(config)
        self._destinations: dict[str, Destination] = {}
        self._sinks: dict[str, DestinationSink] = {}
        for dest in destinations:
            self._add(dest)
        # one scaler per lower video rung, reused every tick
        self._scalers = {r.name: (r, VideoReformatter()) for r in config.renditions if not r.audio_only}
        self._video = VideoMixer(width=config.width, height=config.height, stale_after_s=config.stale_video_s)
        self._audio = AudioMixer(rate=config.sample_rate)
        self._speaker = ActiveSpeakerDetector(switch_after_s=config.speaker_switch_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._started_at = 0.0
        self._error: BaseException | None = None
        # stats
        self.frames_out = 0
        self.dropped_frames = 0
        self._out_times: collections.deque[float] = collections.deque()
        self._video_bytes: collections.deque[tuple[float, int]] = collections.deque()
        self._level = SILENCE_DBOV
        self._tiles: list[Tile] = []
        self._tiles_key: tuple = ()

    # --- control (any thread; never blocks on media work) ---------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            if self._stopped:
                raise CompositorError("a stopped program cannot start again")
            self._thread = threading.Thread(target=self._run, name="program", daemon=True)
            self._started_at = self._clock()
            for sink in self._sinks.values():
                sink.start()
        self._thread.start()

    def set_participants(self, participants: Iterable[Participant]) -> None:
        stage = tuple(participants)
        with self._lock:
            gone = {p.user_id for p in self._participants} - {p.user_id for p in stage}
            self._participants = stage
            for user_id in gone:
                self._latest.pop(user_id, None)
                self._audio_inbox.pop(user_id, None)

    def push_video(self, user_id: int, frame: av.VideoFrame) -> None:
        now = self._clock()
        with self._lock:
            self._seq += 1
            self._latest[user_id] = LatestFrame(frame, now, self._seq)

    def push_audio(self, user_id: int, frame: av.AudioFrame) -> None:
        with self._lock:
            inbox = self._audio_inbox.get(user_id)
            if inbox is None:
                inbox = self._audio_inbox[user_id] = collections.deque(maxlen=AUDIO_INBOX_FRAMES)
            inbox.append(frame)

    def set_layout(self, kind: str, focus_user_id: int | None = None) -> None:
        if kind not in LAYOUTS:
            raise ConfigError(f"unknown layout {kind!r} (one of {', '.join(LAYOUTS)})")
        with self._lock:
            self._layout = (kind, focus_user_id)

    def add_destination(self, destination: Destination) -> None:
        with self._lock:
            if destination.id in self._sinks:
                raise CompositorError(f"destination {destination.id!r} already exists")
            sink = self._add(destination)
            if self._thread is not None and not self._stopped:
                sink.start()

    def remove_destination(self, destination_id: str) -> None:
        """Stops the destination without waiting for it (its thread drains and closes on its own)."""
        with self._lock:
            sink = self._sinks.pop(destination_id, None)
            self._destinations.pop(destination_id, None)
        if sink is not None:
            threading.Thread(target=sink.stop, name=f"sink-stop-{destination_id}", daemon=True).start()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Flush the encoders, let each sink write what it has, close everything. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
        self._stop.set()
        if thread is not None:
            thread.join(timeout_s)
        with self._lock:
            sinks = list(self._sinks.values())
        for sink in sinks:
            sink.request_stop()  # all drain at once
        for sink in sinks:
            sink.stop()
        if thread is None or not thread.is_alive():
            self._encoder.close()

    def stats(self) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            while self._out_times and now - self._out_times[0] > STATS_WINDOW_S:
                self._out_times.popleft()
            while self._video_bytes and now - self._video_bytes[0][0] > STATS_WINDOW_S:
                self._video_bytes.popleft()
            window = min(STATS_WINDOW_S, max(1e-3, now - self._started_at)) if self._thread else STATS_WINDOW_S
            return {
                "fps": round(len(self._out_times) / window, 2),
                "frames_out": self.frames_out,
                "dropped_frames": self.dropped_frames,
                "video_bitrate_bps": int(sum(b for _, b in self._video_bytes) * 8 / window),
                "audio_level_dbov": round(self._level, 1),
                "layout": self._layout[0],
                "focus_user_id": self._layout[1],
                "active_speaker_id": self._speaker.active_speaker_id,
                "participants": len(self._participants),
                "keyframes": self._encoder.keyframes,
                "keyframes_by_rendition": dict(self._encoder.keyframes_by_rendition),
                "running": self._thread is not None and self._thread.is_alive(),
                "error": f"{self._error.__class__.__name__}: {self._error}" if self._error else None,
                "destinations": {dest_id: sink.status() for dest_id, sink in self._sinks.items()},
            }

    # --- the program thread ------------------------------------------------------------------------------

    def _add(self, destination: Destination) -> DestinationSink:
        rung = self.config.rendition(destination.rendition)  # ConfigError for a rung this program lacks
        audio_key = destination.rendition if rung is not None and rung.audio_bitrate else ""
        self._destinations[destination.id] = destination
        sink = self._sinks[destination.id] = DestinationSink(
            destination,
            video_template=None if rung is not None and rung.audio_only else self._encoder.video_templates[destination.rendition],
            audio_template=self._encoder.audio_templates[audio_key],
            audio_key=audio_key,
            queue_packets=self.config.sink_queue_packets,
        )
        return sink

    def _run(self) -> None:
        fps, rate = self.config.fps, self.config.sample_rate
        keyint = self.config.keyint_frames
        t0 = self._clock()
        tick = 0
        audio_pts = 0
        try:
            while not self._stop.is_set():
                delay = t0 + tick / fps - self._clock()
                if delay > 0 and self._stop.wait(delay):
                    break
                behind = int((self._clock() - t0) * fps) - tick
                next_tick = tick
                if behind > 2:  # too late to catch up frame by frame: skip to now, keep audio continuous
                    next_tick = tick + behind
                    with self._lock:
                        self.dropped_frames += behind
                due = next_tick * rate // fps
                while audio_pts + AAC_FRAME_SAMPLES <= due:
                    self._audio_block(audio_pts)
                    audio_pts += AAC_FRAME_SAMPLES
                # a keyframe on each keyint boundary, also when skipping ticks jumped over it
                keyframe = next_tick // keyint != (tick - 1) // keyint
                tick = next_tick
                self._video_tick(tick, keyframe=keyframe)
                tick += 1
            self._fan_out(self._encoder.flush())
        except Exception as exc:  # noqa: BLE001 - reported in stats; the job decides what to do
            log.exception("the program thread failed")
            self._error = exc

    def _audio_block(self, pts: int) -> None:
        with self._lock:
            on_stage = {p.user_id for p in self._participants}
            inboxes = {uid: list(inbox) for uid, inbox in self._audio_inbox.items() if inbox and uid in on_stage}
            for inbox in self._audio_inbox.values():
                inbox.clear()
        for uid in self._audio.user_ids() - on_stage:  # left the stage: not heard, not a speaker
            self._audio.forget(uid)
            self._speaker.forget(uid)
        for uid, frames in inboxes.items():
            for frame in frames:
                self._audio.push(uid, frame)
        block = self._audio.mix(AAC_FRAME_SAMPLES)
        t = pts / self.config.sample_rate
        for uid, level in block.levels.items():
            self._speaker.observe(uid, level, t)
        self._level = block.level_dbov
        self._fan_out(self._encoder.encode_audio(block.samples, pts=pts))

    def _video_tick(self, tick: int, *, keyframe: bool) -> None:
        now = self._clock()
        with self._lock:
            participants = self._participants
            latest = dict(self._latest)
            kind, focus = self._layout
        active = self._speaker.active_speaker_id
        key = (kind, focus, active if kind != "single" else None, participants)
        if key != self._tiles_key:
            self._tiles_key = key
            self._tiles = layout_compute(
                kind, participants, width=self.config.width, height=self.config.height,
                focus_user_id=focus, active_speaker_id=active,
            )
            shown = {t.user_id for t in self._tiles}
            for uid in self._video.user_ids() - shown:
                self._video.forget(uid)
        frame = self._video.compose(
            self._tiles,
            latest,
            names={p.user_id: p.name for p in participants},
            muted=frozenset(p.user_id for p in participants if p.video_muted),
            now=now,
        )
        packets = self._encoder.encode_video(frame, pts=tick, keyframe=keyframe)
        self._fan_out(packets)  # the program first: its destinations do not wait for the lower rungs
        for name, (rung, scaler) in self._scalers.items():
            scaled = scaler.reformat(frame, width=rung.width, height=rung.height, interpolation="BILINEAR")
            self._fan_out(self._encoder.encode_video(scaled, pts=tick, keyframe=keyframe, rendition=name))
        done = self._clock()
        with self._lock:
            self.frames_out += 1
            self._out_times.append(done)
            self._video_bytes.append((done, sum(len(p.data) for p in packets)))

    def _fan_out(self, packets: list[EncodedPacket]) -> None:
        if not packets:
            return
        with self._lock:
            sinks = list(self._sinks.values())
        for packet in packets:
            for sink in sinks:
                if sink.wants(packet):
                    sink.offer(packet)
