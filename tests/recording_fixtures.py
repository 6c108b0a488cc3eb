"""A published recording with real media files in a temporary storage, for access and review tests."""
from __future__ import annotations

import io
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from django.core.files.storage import storages
from django.utils import timezone


def _encode(path: Path, *, codec: str, seconds: float, fps: int = 30, size: tuple[int, int] = (320, 240)) -> None:
    """A moving test picture, so every frame differs and players have something to show."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "g": str(fps)}
        for i in range(int(seconds * fps)):
            picture = np.zeros((size[1], size[0], 3), np.uint8)
            picture[:, (i * 4) % size[0] :, 0] = 200
            picture[(i * 2) % size[1] :, :, 1] = 120
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def published_recording(*, classroom_id: int, session_id: int, user_id: int, work: Path):
    """Recording 6 s long: program.mp4 over [0, 6000] ms, one video track over [1000, 5000] ms, and two
    timeline events, stored in the "recordings" storage the way publishing leaves them."""
    from classroom.models import FileRole, Recording, RecordingFile

    now = timezone.now()
    recording = Recording.objects.create(
        classroom_id=classroom_id, session_id=session_id, status="published", started_at=now - timedelta(seconds=60),
        stopped_at=now - timedelta(seconds=54), duration_ms=6000, published_at=now, expires_at=now + timedelta(days=30),
    )
    files = {"program.mp4": ("libx264", 6.0), "tracks/u%d-video-1.webm" % user_id: ("libvpx", 4.0)}
    store = storages["recordings"]
    for name, (codec, seconds) in files.items():
        local = work / name
        _encode(local, codec=codec, seconds=seconds)
        with local.open("rb") as handle:
            store.save(f"{recording.folder}/{name}", handle)
    RecordingFile.objects.create(recording=recording, role=FileRole.PROGRAM, name="program.mp4", kind="video",
                                 codec="h264", start_ms=0, end_ms=6000, duration_ms=6000, frames=180, stored=True,
                                 size=(work / "program.mp4").stat().st_size)
    track = f"tracks/u{user_id}-video-1.webm"
    RecordingFile.objects.create(recording=recording, role=FileRole.TRACK, name=track, kind="video", codec="vp8",
                                 user_id=user_id, participant_name="Ada Lovelace", participant_role="instructor",
                                 start_ms=1000, end_ms=5000, duration_ms=4000, frames=120, stored=True,
                                 size=(work / track).stat().st_size)
    manifest = b'{"schema": "classcast.recording", "version": 1}\n'
    store.save(f"{recording.folder}/manifest.json", io.BytesIO(manifest))
    RecordingFile.objects.create(recording=recording, role=FileRole.MANIFEST, name="manifest.json", stored=True,
                                 size=len(manifest))
    recording.manifest = {
        "events": [
            {"offset_ms": 2000, "kind": "hand.raised", "actor": {"id": 2, "name": "Ben Okafor", "role": ""}, "data": {}},
            {"offset_ms": 3500, "kind": "chat.message", "actor": {"id": 2, "name": "Ben Okafor", "role": ""},
             "data": {"text": "hello"}},
        ],
        "gaps": [],
    }
    recording.save(update_fields=["manifest"])
    return recording
