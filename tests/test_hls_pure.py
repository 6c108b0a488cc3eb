"""hls_packager's pure parts, golden-tested: AMF0, the RTMP chunk stream, FLV tags, playlist text,
segment bookkeeping and the folder checks. No sockets, no PyAV."""
from __future__ import annotations

import os
import struct
from datetime import datetime, timedelta, timezone

import m3u8
import pytest

from hls_packager import PackagerError, amf0, flv
from hls_packager.errors import ProtocolError, UnsafeFolderError
from hls_packager.playlist import SegmentInfo, live_playlist, render, target_duration, vod_playlist
from hls_packager.rtmp_chunks import AUDIO, COMMAND_AMF0, SET_CHUNK_SIZE, VIDEO, ChunkParser, ChunkWriter, Message
from hls_packager.segments import FolderHistory, SegmentCutter
from hls_packager.storage import load_history, safe_folder, write_atomic, write_playlists

pytestmark = pytest.mark.once  # pure media: the deployment mode does not matter

T0 = datetime(2026, 11, 21, 9, 0, 0, tzinfo=timezone.utc)


# --- AMF0 --------------------------------------------------------------------------------------------

def test_amf0_round_trip():
    values = ["connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live", "fpad": False}, None, [1.0, "x"]]
    assert amf0.decode_all(amf0.encode(*values)) == values


def test_amf0_golden_bytes():
    assert amf0.encode("a", 1, True, None) == b"\x02\x00\x01a" + b"\x00" + struct.pack(">d", 1.0) + b"\x01\x01" + b"\x05"
    assert amf0.encode({"k": "v"}) == b"\x03\x00\x01k\x02\x00\x01v\x00\x00\x09"


def test_amf0_ecma_array_as_ffmpeg_writes_onmetadata():
    body = b"\x08\x00\x00\x00\x01" + b"\x00\x05width" + b"\x00" + struct.pack(">d", 640.0) + b"\x00\x00\x09"
    assert amf0.decode_all(b"\x02\x00\x0aonMetaData" + body) == ["onMetaData", {"width": 640.0}]


@pytest.mark.parametrize(
    "data",
    [b"\x02\x00\x05ab", b"\x00\x01", b"\x03\x00\x01k", b"\x0d", b"\x0a\xff\xff\xff\xff\x05", b"\x03" * 200],
)
def test_amf0_garbage_is_a_protocol_error(data):
    with pytest.raises(ProtocolError):
        amf0.decode_all(data)


# --- chunk stream ------------------------------------------------------------------------------------

def _encode(messages: list[tuple[int, Message]], chunk_size: int = 128) -> bytes:
    writer = ChunkWriter()
    writer.chunk_size = chunk_size
    return b"".join(writer.encode(csid, m) for csid, m in messages)


def test_chunk_writer_golden():
    msg = Message(COMMAND_AMF0, 0, 0, b"x" * 130)
    data = _encode([(3, msg)])
    assert data[:12] == bytes([3, 0, 0, 0, 0, 0, 130, 20, 0, 0, 0, 0])
    assert data[12 + 128] == 0xC3 and len(data) == 12 + 130 + 1


def test_chunk_parser_reassembles_interleaved_and_split_at_every_byte():
    video = Message(VIDEO, 1, 40, os.urandom(300))
    audio = Message(AUDIO, 1, 21, os.urandom(200))
    writer = ChunkWriter()
    v, a = writer.encode(6, video), writer.encode(4, audio)
    # interleave: first chunk of video, the whole audio, then the rest of the video
    data = v[:12 + 128] + a + v[12 + 128 :]
    parser = ChunkParser(max_message_bytes=1 << 20)
    got = [m for i in range(len(data)) for m in parser.feed(data[i : i + 1])]
    assert got == [audio, video]
    assert parser.buffered_bytes == 0


def test_chunk_parser_delta_headers_extended_timestamps_and_set_chunk_size():
    header0 = bytes([4]) + (1000).to_bytes(3, "big") + (3).to_bytes(3, "big") + bytes([AUDIO]) + struct.pack("<I", 1)
    header2 = bytes([0x80 | 4]) + (23).to_bytes(3, "big")  # type 2: only a delta
    header3 = bytes([0xC0 | 4])  # type 3 starting a new message: the same delta again
    ext0 = bytes([5]) + b"\xff\xff\xff" + (2).to_bytes(3, "big") + bytes([VIDEO]) + struct.pack("<I", 1) + struct.pack(">I", 0x01000000)
    set_size = bytes([2, 0, 0, 0, 0, 0, 4, SET_CHUNK_SIZE, 0, 0, 0, 0]) + struct.pack(">I", 4096)
    big = bytes([6, 0, 0, 5]) + (3000).to_bytes(3, "big") + bytes([VIDEO]) + struct.pack("<I", 1) + b"z" * 3000
    parser = ChunkParser(max_message_bytes=1 << 20)
    got = parser.feed(header0 + b"abc" + header2 + b"def" + header3 + b"ghi" + ext0 + b"xy" + set_size + big)
    assert [(m.type_id, m.timestamp, m.payload[:3]) for m in got] == [
        (AUDIO, 1000, b"abc"), (AUDIO, 1023, b"def"), (AUDIO, 1046, b"ghi"),
        (VIDEO, 0x01000000, b"xy"), (SET_CHUNK_SIZE, 0, b"\x00\x00\x10"), (VIDEO, 5, b"zzz"),
    ]
    assert parser.chunk_size == 4096 and len(got[-1].payload) == 3000


def test_chunk_parser_abort_drops_the_half_message():
    parser = ChunkParser(max_message_bytes=1 << 20)
    half = ChunkWriter().encode(6, Message(VIDEO, 1, 0, b"v" * 300))[: 12 + 128]
    abort = bytes([2, 0, 0, 0, 0, 0, 4, 2, 0, 0, 0, 0]) + struct.pack(">I", 6)
    assert [m.type_id for m in parser.feed(half + abort)] == [2]
    assert parser.buffered_bytes == 0
    assert parser.feed(ChunkWriter().encode(6, Message(AUDIO, 1, 7, b"ok"))) == [Message(AUDIO, 1, 7, b"ok")]


@pytest.mark.parametrize(
    "data, why",
    [
        (bytes([0x44]) + b"\x00" * 10, "type-1 header before any type-0"),
        (bytes([4, 0, 0, 0, 0x7F, 0xFF, 0xFF, VIDEO, 1, 0, 0, 0]), "message over the limit"),
        (bytes([2, 0, 0, 0, 0, 0, 4, SET_CHUNK_SIZE, 0, 0, 0, 0, 0, 0, 0, 0]), "chunk size 0"),
    ],
)
def test_chunk_parser_refuses(data, why):
    with pytest.raises(ProtocolError):
        ChunkParser(max_message_bytes=1 << 20).feed(data)


def test_chunk_parser_bounds_half_received_bytes_across_chunk_streams():
    parser = ChunkParser(max_message_bytes=1000)
    with pytest.raises(ProtocolError):
        for csid in range(3, 40):  # many chunk streams each holding a half message
            parser.feed(bytes([csid, 0, 0, 0, 0, 3, 0xE8, VIDEO, 1, 0, 0, 0]) + b"x" * 128)
    assert parser.buffered_bytes <= 2 * 1000 + 128


def test_chunk_parser_random_garbage_never_hangs_or_grows():
    rng = __import__("random").Random(7)
    for _ in range(200):
        parser = ChunkParser(max_message_bytes=64 * 1024)
        try:
            for _ in range(20):
                parser.feed(rng.randbytes(rng.randint(1, 4000)))
        except PackagerError:
            pass
        assert parser.buffered_bytes <= 2 * 64 * 1024 + 70000


# --- FLV ---------------------------------------------------------------------------------------------

def test_flv_tag_golden():
    assert flv.tag(flv.TAG_VIDEO, 0x01020304, b"\x17\x01") == (
        b"\x09\x00\x00\x02\x02\x03\x04\x01\x00\x00\x00" + b"\x17\x01" + struct.pack(">I", 13)
    )
    meta = amf0.encode("@setDataFrame", "onMetaData", {"width": 640})
    assert flv.tag(flv.TAG_SCRIPT, 0, meta)[11:-4] == amf0.encode("onMetaData", {"width": 640})


def test_flv_codecs_and_keyframes():
    assert flv.video_codec(b"\x17\x00") == "h264" and flv.is_video_keyframe(b"\x17\x01")
    assert not flv.is_video_keyframe(b"\x27\x01")
    assert flv.video_codec(b"\x90hvc1") == "hevc"
    assert flv.audio_codec(b"\xaf\x00") == "aac"


# --- playlists ---------------------------------------------------------------------------------------

def _segments(durations, *, start=0, disc_at=()):
    out, moment = [], T0
    for i, d in enumerate(durations):
        out.append(SegmentInfo(start + i, start + i, d, moment, discontinuity=i in disc_at))
        moment += timedelta(seconds=d)
    return out


GOLDEN_LIVE = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:2
#EXT-X-DISCONTINUITY-SEQUENCE:1
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-PROGRAM-DATE-TIME:2026-11-21T09:00:04.000Z
#EXTINF:2.000,
seg-2.ts
#EXT-X-DISCONTINUITY
#EXT-X-PROGRAM-DATE-TIME:2026-11-21T09:00:06.000Z
#EXTINF:1.500,
seg-3.ts
#EXT-X-PROGRAM-DATE-TIME:2026-11-21T09:00:07.500Z
#EXTINF:2.033,
seg-4.ts
"""

GOLDEN_VOD = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:0
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-PROGRAM-DATE-TIME:2026-11-21T09:00:00.000Z
#EXTINF:2.000,
seg-0.ts
#EXT-X-DISCONTINUITY
#EXT-X-PROGRAM-DATE-TIME:2026-11-21T09:00:02.000Z
#EXTINF:2.000,
seg-1.ts
#EXT-X-PROGRAM-DATE-TIME:2026-11-21T09:00:04.000Z
#EXTINF:2.000,
seg-2.ts
#EXT-X-DISCONTINUITY
#EXT-X-PROGRAM-DATE-TIME:2026-11-21T09:00:06.000Z
#EXTINF:1.500,
seg-3.ts
#EXT-X-PROGRAM-DATE-TIME:2026-11-21T09:00:07.500Z
#EXTINF:2.033,
seg-4.ts
#EXT-X-ENDLIST
"""


def test_live_playlist_golden_slides_and_counts_discontinuities():
    segments = _segments([2.0, 2.0, 2.0, 1.5, 2.0333], disc_at=(1, 3))
    text = live_playlist(segments, window=3, configured_s=2.0, ended=False)
    assert text == GOLDEN_LIVE
    parsed = m3u8.loads(text)
    assert parsed.media_sequence == 2 and parsed.discontinuity_sequence == 1 and not parsed.is_endlist
    assert [s.discontinuity for s in parsed.segments] == [False, True, False]
    assert parsed.segments[0].program_date_time == T0 + timedelta(seconds=4)
    assert live_playlist(segments, window=3, configured_s=2.0, ended=True) == GOLDEN_LIVE + "#EXT-X-ENDLIST\n"


def test_vod_playlist_golden():
    text = vod_playlist(_segments([2.0, 2.0, 2.0, 1.5, 2.0333], disc_at=(1, 3)), configured_s=2.0)
    assert text == GOLDEN_VOD
    parsed = m3u8.loads(text)
    assert parsed.playlist_type == "vod" and parsed.is_endlist and len(parsed.segments) == 5


def test_target_duration_rounds_to_nearest_and_never_below_the_setting():
    assert target_duration(_segments([2.0, 2.4]), 2.0) == 2
    assert target_duration(_segments([2.0, 2.5]), 2.0) == 3
    assert target_duration(_segments([1.0]), 1.5) == 2
    assert target_duration([], 2.0) == 2


def test_empty_playlist_is_valid():
    assert m3u8.loads(render([], target_s=2)).segments == []


# --- segment bookkeeping ---------------------------------------------------------------------------

def test_cutter_cuts_at_first_keyframe_at_or_after_target():
    cutter = SegmentCutter(2.0)
    cutter.begin(10.0)
    assert not cutter.should_cut(11.0, keyframe=True)
    assert not cutter.should_cut(12.5, keyframe=False)
    assert cutter.should_cut(11.9995, keyframe=True)  # whole-millisecond FLV clocks round 2 s down
    assert cutter.should_cut(13.0, keyframe=True)


def test_cutter_takes_a_keyframe_just_short_of_the_target():
    """A segment that began a frame late cuts at the next GOP boundary instead of running two GOPs."""
    cutter = SegmentCutter(2.0)
    cutter.begin(0.033)
    assert cutter.should_cut(2.0, keyframe=True)  # 1.967 s
    assert not cutter.should_cut(1.7, keyframe=True)  # 1.667 s: too short, wait for the next


def test_folder_history_numbering_and_discontinuity_across_publishers():
    history = FolderHistory()
    history.begin_publish()
    a = history.add(history.take_index(), 2.0, T0)
    b = history.add(history.take_index(), 2.0, T0)
    history.begin_publish()  # the publisher came back
    c = history.add(history.take_index(), 2.0, T0)
    d = history.add(history.take_index(), 1.0, T0)
    assert [(s.index, s.sequence, s.discontinuity) for s in (a, b, c, d)] == [(0, 0, False), (1, 1, False), (2, 2, True), (3, 3, False)]


def test_folder_history_restores_from_disk_and_never_reuses_a_name(tmp_path):
    history = FolderHistory()
    history.begin_publish()
    for _ in range(3):
        history.add(history.take_index(), 2.0, T0)
    write_playlists(tmp_path, history, window=2, target_s=2.0, ended=True)
    (tmp_path / "seg-7.ts").write_bytes(b"")  # left by a packager that died mid-segment
    restored = load_history(tmp_path)
    assert [(s.index, s.sequence) for s in restored.segments] == [(0, 0), (1, 1), (2, 2)]
    assert restored.next_index == 8
    restored.begin_publish()
    assert restored.add(restored.take_index(), 2.0, T0).discontinuity


# --- files -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "folder",
    ["", "/etc", "../x", "a/../../x", "a/./b", "a//b", "a/", "a\\..\\b", "a\x00b", ".hidden", "a b", None, 5, "x/" * 9 + "y"],
)
def test_safe_folder_refuses_path_tricks(tmp_path, folder):
    with pytest.raises(UnsafeFolderError):
        safe_folder(tmp_path, folder)


def test_safe_folder_refuses_symlink_escape(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafeFolderError):
        safe_folder(tmp_path / "out", "link/elsewhere")
    assert safe_folder(tmp_path / "out", "class-3/session-17") == (tmp_path / "out" / "class-3" / "session-17").resolve()


def test_write_atomic_leaves_no_temp_files(tmp_path):
    write_atomic(tmp_path / "live.m3u8", "one")
    write_atomic(tmp_path / "live.m3u8", "two")
    assert [p.name for p in tmp_path.iterdir()] == ["live.m3u8"]
    assert (tmp_path / "live.m3u8").read_text() == "two"
