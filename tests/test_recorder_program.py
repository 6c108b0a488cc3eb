"""recorder.program (the broadcast's HLS segments kept as a VOD playlist and one MP4) and
recorder.thumbnails. Pure selection and playlist text golden-tested; copy, export and thumbnails run on
real HLS made by the ffmpeg binary: two publishes with a reconnect between them."""
from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import av
import m3u8
import pytest
from PIL import Image

from recorder import RecorderError
from recorder.ffmpeg_bin import FfmpegError, ffmpeg_default
from recorder.program import (
    ProgramCopyResult,
    ProgramError,
    ProgramExportError,
    ProgramSegment,
    UnsafeSegmentUriError,
    program_copy,
    program_export_mp4,
    program_playlist_render,
    program_segments_select,
    program_window,
)
from recorder.thumbnails import ThumbnailError, thumbnail_make

pytestmark = pytest.mark.once  # pure media: the deployment mode does not matter

GOLDEN = Path(__file__).resolve().parent / "golden" / "recorder"
T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sample() -> str:
    return (GOLDEN / "program_vod_sample.m3u8").read_text(encoding="utf-8")


def uris(segments: list[ProgramSegment]) -> list[str]:
    return [s.uri for s in segments]


# --- selection and playlist text (pure) ---------------------------------------------------------------------

def test_select_and_render_golden():
    kept = program_segments_select(playlist_text=sample(), start=at(3), end=at(16.75))
    assert uris(kept) == ["seg-1.ts", "seg-2.ts", "seg-3.ts", "seg-4.ts", "seg-5.ts"]
    assert [s.discontinuity for s in kept] == [False, False, False, True, False]
    assert program_playlist_render(segments=kept) == (GOLDEN / "program_selected.m3u8").read_text(encoding="utf-8")


def test_select_window_is_half_open():
    # seg-1 is [2, 4): a window ending at 2 leaves it out, one starting at 4 too
    assert uris(program_segments_select(playlist_text=sample(), start=at(0), end=at(2))) == ["seg-0.ts"]
    assert uris(program_segments_select(playlist_text=sample(), start=at(4), end=at(4.001))) == ["seg-2.ts"]
    assert program_segments_select(playlist_text=sample(), start=at(7.6), end=at(12.0)) == []  # the reconnect gap


def test_the_first_kept_segment_carries_no_discontinuity():
    kept = program_segments_select(playlist_text=sample(), start=at(13), end=at(100))
    assert uris(kept) == ["seg-4.ts", "seg-5.ts", "seg-6.ts", "seg-7.ts"]
    assert not any(s.discontinuity for s in kept)
    assert "#EXT-X-DISCONTINUITY" not in program_playlist_render(segments=kept)


def test_select_reads_times_and_durations():
    (segment,) = program_segments_select(playlist_text=sample(), start=at(18.9), end=at(19))
    assert segment == ProgramSegment("seg-7.ts", 0.968, at(18.75), False)
    assert segment.program_date_time.tzinfo is not None


def test_select_reads_ffmpegs_own_playlists():
    # ffmpeg's hls muxer writes EXTINF before the program date time, with a +0000 offset
    text = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:EVENT\n"
        "#EXTINF:2.000000,\n#EXT-X-PROGRAM-DATE-TIME:2026-03-02T10:00:00.500+0100\nseg-0.ts\n"
        "#EXTINF:1.000000,\n#EXT-X-PROGRAM-DATE-TIME:2026-03-02T10:00:02.500+0100\nseg-1.ts\n"
    )
    kept = program_segments_select(playlist_text=text, start=at(0), end=at(60))
    assert [(s.uri, s.program_date_time, s.duration_s) for s in kept] == [("seg-0.ts", at(0.5), 2.0), ("seg-1.ts", at(2.5), 1.0)]
    assert program_window(segments=kept) == (at(0.5), at(3.5))


def test_select_refuses_naive_datetimes_and_playlists_without_dates():
    with pytest.raises(ValueError):
        program_segments_select(playlist_text=sample(), start=datetime(2026, 3, 2, 9), end=at(10))
    with pytest.raises(ProgramError):
        program_segments_select(playlist_text="#EXTM3U\n#EXTINF:2.0,\nseg-0.ts\n", start=at(0), end=at(10))


def test_render_is_a_valid_vod_playlist():
    segments = [
        ProgramSegment("seg-9.ts", 2.002, at(0), True),  # a leading discontinuity is never written
        ProgramSegment("seg-10.ts", 3.4994, at(2.002)),
        ProgramSegment("seg-12.ts", 1.0, at(9), True),
    ]
    text = program_playlist_render(segments=segments)
    assert text.count("#EXT-X-DISCONTINUITY") == 1
    parsed = m3u8.loads(text)
    assert parsed.playlist_type == "vod" and parsed.is_endlist and parsed.version == 3
    assert parsed.target_duration == 4 and parsed.media_sequence == 0 and parsed.is_independent_segments
    assert [(s.uri, s.duration, s.current_program_date_time, s.discontinuity) for s in parsed.segments] == [
        ("seg-9.ts", 2.002, at(0), False),
        ("seg-10.ts", 3.499, at(2.002), False),
        ("seg-12.ts", 1.0, at(9), True),
    ]


def test_window_spans_first_start_to_last_end():
    kept = program_segments_select(playlist_text=sample(), start=at(0), end=at(100))
    assert program_window(segments=kept) == (at(0), at(19.718))
    with pytest.raises(ProgramError):
        program_window(segments=[])


# --- copy (I/O, no media needed) ------------------------------------------------------------------------------

def source_folder(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "hls"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(name.encode() * 100)
    return folder


def test_copy_links_segments_and_writes_the_playlist(tmp_path):
    kept = program_segments_select(playlist_text=sample(), start=at(3), end=at(16.75))
    source = source_folder(tmp_path, uris(kept))
    dest = tmp_path / "rec" / "program"
    result = program_copy(source_folder=source, segments=kept, dest_folder=dest)
    assert result == ProgramCopyResult(playlist=dest / "program.m3u8", copied=5, missing=())
    assert result.playlist.read_text(encoding="utf-8") == program_playlist_render(segments=kept)
    for name in uris(kept):
        assert (dest / name).read_bytes() == (source / name).read_bytes()
        assert os.path.samefile(dest / name, source / name)  # a hard link: no bytes copied
    assert sorted(p.name for p in dest.iterdir()) == sorted([*uris(kept), "program.m3u8"])  # no temp left


def test_copy_is_idempotent(tmp_path):
    kept = program_segments_select(playlist_text=sample(), start=at(0), end=at(100))
    source = source_folder(tmp_path, uris(kept))
    dest = tmp_path / "program"
    first = program_copy(source_folder=source, segments=kept, dest_folder=dest, playlist_name="index.m3u8")
    inodes = {p.name: p.stat().st_ino for p in dest.iterdir()}
    second = program_copy(source_folder=source, segments=kept, dest_folder=dest, playlist_name="index.m3u8")
    assert first == second and first.copied == 8
    assert {p.name: p.stat().st_ino for p in dest.iterdir() if p.suffix == ".ts"} == {k: v for k, v in inodes.items() if k.endswith(".ts")}


def test_copy_falls_back_to_copying_when_links_fail(tmp_path, monkeypatch):
    kept = program_segments_select(playlist_text=sample(), start=at(0), end=at(5))
    source = source_folder(tmp_path, uris(kept))

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    result = program_copy(source_folder=source, segments=kept, dest_folder=tmp_path / "program")
    assert result.copied == 3 and result.missing == ()
    for name in uris(kept):
        copy = tmp_path / "program" / name
        assert copy.read_bytes() == (source / name).read_bytes() and not os.path.samefile(copy, source / name)


def test_copy_skips_missing_segments_and_marks_the_gap(tmp_path):
    kept = program_segments_select(playlist_text=sample(), start=at(0), end=at(7))
    assert uris(kept) == ["seg-0.ts", "seg-1.ts", "seg-2.ts", "seg-3.ts"]
    source = source_folder(tmp_path, ["seg-1.ts", "seg-3.ts"])
    result = program_copy(source_folder=source, segments=kept, dest_folder=tmp_path / "program")
    assert (result.copied, result.missing) == (2, ("seg-0.ts", "seg-2.ts"))
    listed = m3u8.loads(result.playlist.read_text(encoding="utf-8")).segments
    assert [(s.uri, s.discontinuity) for s in listed] == [("seg-1.ts", False), ("seg-3.ts", True)]


@pytest.mark.parametrize(
    "uri", ["../seg-0.ts", "/etc/passwd", "http://example.com/seg-0.ts", "sub/seg-0.ts", "..", ".hidden.ts", "seg 0.ts", ""]
)
def test_copy_refuses_anything_but_plain_file_names(tmp_path, uri):
    segments = [ProgramSegment("seg-0.ts", 2.0, at(0)), ProgramSegment(uri, 2.0, at(2))]
    source = source_folder(tmp_path, ["seg-0.ts"])
    dest = tmp_path / "program"
    with pytest.raises(UnsafeSegmentUriError) as caught:
        program_copy(source_folder=source, segments=segments, dest_folder=dest)
    assert isinstance(caught.value, RecorderError)
    assert not dest.exists()  # refused before anything was written
    with pytest.raises(UnsafeSegmentUriError):
        program_copy(source_folder=source, segments=segments[:1], dest_folder=dest, playlist_name="../x.m3u8")


# --- real HLS: two publishes with a reconnect -----------------------------------------------------------------

@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return ffmpeg_default()


def publish(ffmpeg: str, folder: Path, *, first_index: int, tone_hz: int, ts_offset_s: float) -> list[float]:
    """4 s of 640x360@30 H.264 (a keyframe every 2 s) + AAC as 2 s MPEG-TS segments seg-<n>.ts, like a
    publisher through the packager; returns the segments' durations (EXTINF)."""
    playlist = folder / f"publish-{first_index}.m3u8"
    subprocess.run(
        [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30:duration=4",
            "-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=48000:duration=4",
            "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-keyint_min", "60", "-sc_threshold", "0",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-output_ts_offset", str(ts_offset_s),
            "-f", "hls", "-hls_time", "2", "-hls_playlist_type", "event", "-start_number", str(first_index),
            "-hls_segment_filename", str(folder / "seg-%d.ts"), str(playlist),
        ],
        check=True,
    )
    durations = [float(s.duration) for s in m3u8.load(str(playlist)).segments]
    playlist.unlink()
    return durations


@pytest.fixture(scope="module", params=["timestamps-restart", "timestamps-jump-forward"])
def packager_folder(request, ffmpeg, tmp_path_factory) -> Path:
    """A packager folder after a reconnect: seg-0/1 from the first publisher, seg-2/3 from the second
    (its timestamps start over, or jump 5 s ahead), and vod.m3u8 with a discontinuity, 3 s apart."""
    folder = tmp_path_factory.mktemp("hls")
    first = publish(ffmpeg, folder, first_index=0, tone_hz=440, ts_offset_s=0)
    second = publish(ffmpeg, folder, first_index=2, tone_hz=880, ts_offset_s=0 if request.param == "timestamps-restart" else 9)
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:EVENT"]
    moment = 0.0
    for index, duration in enumerate(first + second):
        if index == len(first):
            lines.append("#EXT-X-DISCONTINUITY")
            moment += 3.0  # the reconnect
        lines += [f"#EXT-X-PROGRAM-DATE-TIME:{at(moment).strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z", f"#EXTINF:{duration:.3f},", f"seg-{index}.ts"]
        moment += duration
    (folder / "vod.m3u8").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def exported(packager_folder, ffmpeg, tmp_path_factory) -> tuple[list[ProgramSegment], Path, Path]:
    kept = program_segments_select(playlist_text=(packager_folder / "vod.m3u8").read_text(encoding="utf-8"), start=at(0), end=at(60))
    result = program_copy(source_folder=packager_folder, segments=kept, dest_folder=tmp_path_factory.mktemp("program"))
    assert result.copied == 4 and result.missing == ()
    out = result.playlist.parent / "program.mp4"
    program_export_mp4(playlist=result.playlist, out=out, ffmpeg=ffmpeg)
    return kept, result.playlist, out


def test_export_plays_from_start_to_end(exported):
    kept, _, out = exported
    expected_s = sum(s.duration_s for s in kept)
    assert [s.discontinuity for s in kept] == [False, False, True, False]
    with av.open(str(out)) as container:
        assert {s.type: s.codec_context.name for s in container.streams} == {"video": "h264", "audio": "aac"}
        assert abs(container.duration / av.time_base - expected_s) < 2.0  # within one segment
        times = [float(frame.time) for frame in container.decode(video=0)]
    assert abs(len(times) - 30 * expected_s) <= 2
    steps = [b - a for a, b in zip(times, times[1:])]
    assert min(steps) > 0 and max(steps) < 2.5 / 30  # no hole or overlap where the publisher came back
    assert abs(times[-1] - times[0] - expected_s) < 0.2


def test_export_is_faststart(exported):
    _, _, out = exported
    data = out.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")


def test_export_does_not_reencode(exported):
    _, playlist, out = exported
    source_nals: list[bytes] = []
    for segment in m3u8.loads(playlist.read_text(encoding="utf-8")).segments:
        with av.open(str(playlist.parent / segment.uri)) as container:
            source_nals += slice_nals(container, annexb=True)
    with av.open(str(out)) as container:
        assert slice_nals(container, annexb=False) == source_nals  # the very same coded pictures


def slice_nals(container: av.container.InputContainer, *, annexb: bool) -> list[bytes]:
    """The coded slices (NAL types 1 and 5) of the video, in decoding order."""
    found = []
    for packet in container.demux(video=0):
        if packet.size:
            data = bytes(packet)
            nals = split_annexb(data) if annexb else split_length_prefixed(data)
            found += [nal.rstrip(b"\x00") for nal in nals if nal and nal[0] & 0x1F in (1, 5)]
    return found


def split_annexb(data: bytes) -> list[bytes]:
    return data.split(b"\x00\x00\x01")


def split_length_prefixed(data: bytes) -> list[bytes]:
    nals, pos = [], 0
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        nals.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return nals


def test_export_is_atomic_and_reports_ffmpegs_words(tmp_path, ffmpeg, packager_folder):
    (tmp_path / "program.m3u8").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg-404.ts\n#EXT-X-ENDLIST\n")
    out = tmp_path / "program.mp4"
    with pytest.raises(ProgramExportError) as caught:
        program_export_mp4(playlist=tmp_path / "program.m3u8", out=out, ffmpeg=ffmpeg)
    assert isinstance(caught.value, FfmpegError) and isinstance(caught.value, RecorderError)
    assert caught.value.stderr_tail
    assert sorted(p.name for p in tmp_path.iterdir()) == ["program.m3u8"]  # no MP4, no temp file
    with pytest.raises(ProgramExportError):
        program_export_mp4(playlist=tmp_path / "absent.m3u8", out=out, ffmpeg=ffmpeg)


# --- thumbnails -----------------------------------------------------------------------------------------------

def test_thumbnail_of_the_program(exported, ffmpeg, tmp_path):
    _, _, video = exported
    out = tmp_path / "thumbs" / "program.jpg"
    thumbnail_make(video=video, out=out, at_s=3.0, ffmpeg=ffmpeg)
    with Image.open(out) as image:
        assert (image.format, image.size) == ("JPEG", (320, 180))
    assert [p.name for p in out.parent.iterdir()] == ["program.jpg"]


def test_thumbnail_of_a_segment_with_another_width(packager_folder, ffmpeg, tmp_path):
    out = tmp_path / "seg.jpg"
    thumbnail_make(video=packager_folder / "seg-1.ts", out=out, at_s=0.5, width=200, ffmpeg=ffmpeg)
    with av.open(str(out)) as container:
        frame = next(container.decode(video=0))
    assert frame.width == 200 and frame.height % 2 == 0 and abs(frame.height - 112.5) <= 1


@pytest.mark.parametrize("at_s", [7.99, 8.0, 60.0, -5.0])
def test_thumbnail_time_is_clamped_into_the_video(exported, ffmpeg, tmp_path, at_s):
    _, _, video = exported
    out = tmp_path / "late.jpg"
    thumbnail_make(video=video, out=out, at_s=at_s, ffmpeg=ffmpeg)
    with Image.open(out) as image:
        assert image.size == (320, 180)


def test_thumbnail_of_an_unreadable_file(tmp_path, ffmpeg):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00junk" * 100)
    with pytest.raises(ThumbnailError) as caught:
        thumbnail_make(video=junk, out=tmp_path / "t.jpg", at_s=1.0, ffmpeg=ffmpeg)
    assert isinstance(caught.value, RecorderError)
    with pytest.raises(ThumbnailError):
        thumbnail_make(video=tmp_path / "absent.mp4", out=tmp_path / "t.jpg", at_s=1.0, ffmpeg=ffmpeg)
    assert not (tmp_path / "t.jpg").exists()
