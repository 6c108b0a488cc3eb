"""The quality ladder's pure parts, golden-tested: the master playlist, H.264 levels and CODECS, the
`<key>~<rung>` form, and CLASSCAST_HLS_LADDER as the compositor, the packager and players see it."""
from __future__ import annotations

from pathlib import Path

import m3u8
import pytest

from classroom.services.ladder import (
    LadderSettingError, ladder_cost_pixels, ladder_parse, ladder_program_renditions, ladder_renditions, ladder_stream_key,
)
from compositor.config import ConfigError, ProgramConfig, RenditionConfig
from hls_packager.config import PackagerConfig
from hls_packager.segments import SegmentCutter
from hls_packager.ladder import (
    LadderError, Rendition, h264_codecs, h264_level, master_first_variant, master_playlist, rendition_key_split,
)

pytestmark = pytest.mark.once  # pure: the deployment mode does not matter

GOLDEN = Path(__file__).parent / "golden" / "hls"
PROGRAM = dict(width=1280, height=720, fps=30, video_bitrate=2_500_000, audio_bitrate=128_000)


def default_ladder():
    return ladder_renditions(ladder_parse("720p,360p,audio", **PROGRAM))


def test_master_playlist_golden():
    text = master_playlist(default_ladder())
    assert text == (GOLDEN / "master.m3u8").read_text()
    pl = m3u8.loads(text)
    assert pl.is_variant and pl.version == 6
    got = [(p.uri, p.stream_info.bandwidth, p.stream_info.average_bandwidth, p.stream_info.resolution,
            p.stream_info.codecs, p.stream_info.frame_rate) for p in pl.playlists]
    assert got == [
        ("720p/live.m3u8", 3084300, 2821800, (1280, 720), "avc1.64001f,mp4a.40.2", 30.0),
        ("360p/live.m3u8", 889800, 826800, (640, 360), "avc1.64001e,mp4a.40.2", 30.0),
        ("audio/live.m3u8", 168000, 168000, None, "mp4a.40.2", None),
    ]
    # every variant carries its audio muxed: no EXT-X-MEDIA groups to fetch besides
    assert not pl.media and all(p.stream_info.average_bandwidth <= p.stream_info.bandwidth for p in pl.playlists)
    assert master_first_variant(text) == "720p"


def test_master_first_variant_is_none_for_a_media_playlist():
    assert master_first_variant((GOLDEN / "ll_live.m3u8").read_text()) is None
    assert master_first_variant('#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n../../etc/live.m3u8\n') is None


@pytest.mark.parametrize("size, level, codecs", [
    ((1280, 720, 30), "3.1", "avc1.64001f,mp4a.40.2"),
    ((640, 360, 30), "3", "avc1.64001e,mp4a.40.2"),
    ((1920, 1080, 30), "4", "avc1.640028,mp4a.40.2"),
    ((320, 180, 30), "1.3", "avc1.64000d,mp4a.40.2"),
])
def test_h264_level_and_codecs(size, level, codecs):
    w, h, fps = size
    assert h264_level(width=w, height=h, fps=fps) == level
    assert h264_codecs(level) == codecs


def test_rendition_key_form():
    assert rendition_key_split("abc-_123") == ("abc-_123", None)  # OBS: the plain key, one rendition
    assert rendition_key_split("abc~360p") == ("abc", "360p")
    assert rendition_key_split("abc~") == ("abc", "")
    assert ladder_stream_key("abc", "360p") == "abc~360p"


def test_ladder_setting_parses_into_the_three_views():
    rungs = ladder_parse("720p, 360p:500k ,240p,180p:120k:48k,audio:64k", **PROGRAM)
    assert [(r.name, r.width, r.height, r.video_bitrate, r.audio_bitrate) for r in rungs] == [
        ("720p", 1280, 720, 2_500_000, 128_000), ("360p", 640, 360, 500_000, 128_000),
        ("240p", 426, 240, 300_000, 128_000), ("180p", 320, 180, 120_000, 48_000), ("audio", 0, 0, 0, 64_000),
    ]
    program = ladder_program_renditions(rungs)
    assert program == (  # the rungs with an AAC of their own say so; the others share the program's
        RenditionConfig("360p", 640, 360, 500_000, "3"), RenditionConfig("240p", 426, 240, 300_000, "2.1"),
        RenditionConfig("180p", 320, 180, 120_000, "1.3", audio_bitrate=48_000), RenditionConfig("audio", audio_bitrate=64_000),
    )
    # a rung for a weak link: 120k video + its own 48k AAC, TS included, under 300 kbit/s
    assert ladder_renditions(rungs)[3].bandwidth < 300_000
    ProgramConfig(renditions=program)  # the compositor takes it
    PackagerConfig(ladder=ladder_renditions(rungs))  # and the packager
    assert ladder_cost_pixels(rungs) == (1280 * 720 + 640 * 360 + 426 * 240 + 320 * 180) * 30
    assert [r.name for r in ladder_parse("", **PROGRAM)] == ["720p"]  # no ladder: the program alone


@pytest.mark.parametrize("text", ["360p,720p", "audio,720p", "720p:3M", "720p::64k", "720p,1080p", "720p,360p,360p", "720p,hd", "720p,audio:2k",
                                  "720p,360p:1x"])
def test_ladder_setting_refuses_what_cannot_work(text):
    with pytest.raises(LadderSettingError):
        ladder_parse(text, **PROGRAM)


def test_configs_refuse_bad_rungs():
    with pytest.raises(LadderError):
        Rendition("../x", 1, 1, "mp4a.40.2")
    with pytest.raises(LadderError):
        PackagerConfig(ladder=(Rendition("a", 1, 1, "mp4a.40.2"), Rendition("a", 1, 1, "mp4a.40.2")))
    with pytest.raises(ConfigError):
        RenditionConfig("360p", 641, 360, 600_000)
    with pytest.raises(ConfigError):
        ProgramConfig(renditions=(RenditionConfig("audio"), RenditionConfig("audio")))
    with pytest.raises(ConfigError):
        ProgramConfig().rendition("nope")


def test_an_audio_only_rung_cuts_on_the_video_rungs_grid_without_drift():
    cutter = SegmentCutter(2.0)
    cutter.begin(0.021)  # the first AAC frame
    assert not cutter.should_cut(1.9, keyframe=True, on_grid=True)  # no early cut: audio can cut anywhere
    assert cutter.should_cut(2.005, keyframe=True, on_grid=True)
    cutter.begin(2.005)
    assert not cutter.should_cut(3.99, keyframe=True, on_grid=True)
    assert cutter.should_cut(4.0, keyframe=True, on_grid=True)  # 4.0, not 2.005 + 2: no drift


def test_the_default_setting_has_a_rung_for_a_300_kbit_link(settings):
    rungs = ladder_parse(settings.CLASSCAST_HLS_LADDER, width=1280, height=720, fps=30, video_bitrate=2_500_000,
                         audio_bitrate=128_000)
    video = [r for r in ladder_renditions(rungs) if not r.audio_only]
    # hls.js plays video rungs only (it drops audio-only variants): its lowest must fit a 300 kbit/s link
    assert rungs[0].name == "720p" and min(r.bandwidth for r in video) < 300_000
