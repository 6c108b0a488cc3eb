"""The app's HLS origin: access rules, signed tokens, path tricks, MIME types, cache headers, CORS,
and viewer counting."""
from __future__ import annotations

import gzip
import uuid

import m3u8
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from classroom.hls_encoding import accepts_gzip
from classroom.hls_views import hls_token_issue, playlist_with_token
from classroom.models import Classroom
from classroom.selectors import actor_get
from classroom.services.ingest import session_folder
from classroom.services.sessions import session_start
from classroom.services.viewers import viewer_seen, viewers_count

pytestmark = pytest.mark.usefixtures("fast_passwords")
User = get_user_model()
LIVE = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:0
#EXTINF:2.000,
seg-0.ts
#EXTINF:2.000,
seg-1.ts
"""


@pytest.fixture
def hls(demo, settings, tmp_path):
    settings.CLASSCAST_HLS_ROOT = tmp_path
    cid = demo["class_id"]
    ada = User.objects.get(username="ada")
    session = session_start(classroom_id=cid, actor=actor_get(user=ada, classroom_id=cid))
    folder = tmp_path / session_folder(classroom_id=cid, session_id=session.pk)
    folder.mkdir(parents=True)
    (folder / "live.m3u8").write_text(LIVE)
    (folder / "seg-0.ts").write_bytes(b"\x47" * 188 * 4)
    (folder / "seg-1.ts").write_bytes(b"\x47" * 188 * 4)
    (tmp_path / "secret.txt").write_text("not for you")
    return {"id": cid, "folder": folder}


def member_client(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


def test_members_get_the_playlist_and_segments_with_the_right_headers(hls):
    client = member_client("ben")
    response = client.get(f"/hls/classes/{hls['id']}/live.m3u8")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/vnd.apple.mpegurl"
    assert response["Cache-Control"] == "no-cache, max-age=1"
    assert response["Access-Control-Allow-Origin"] == "*"
    assert [s.uri for s in m3u8.loads(response.content.decode()).segments] == ["seg-0.ts", "seg-1.ts"]
    segment = client.get(f"/hls/classes/{hls['id']}/seg-0.ts")
    assert segment.status_code == 200 and segment["Content-Type"] == "video/mp2t"
    assert segment["Cache-Control"] == "public, max-age=31536000, immutable"
    assert segment.content == b"\x47" * 188 * 4


def test_a_finished_playlist_is_cacheable(hls):
    (hls["folder"] / "live.m3u8").write_text(LIVE + "#EXT-X-ENDLIST\n")
    response = member_client("ben").get(f"/hls/classes/{hls['id']}/live.m3u8")
    assert response["Cache-Control"] == "public, max-age=3600"


def test_private_class_refuses_strangers_but_takes_a_signed_token(hls):
    # Strangers hear what they would for a class that does not exist (no probing of class ids).
    anonymous = Client()
    assert anonymous.get(f"/hls/classes/{hls['id']}/live.m3u8").status_code == 404
    outsider = User.objects.create_user("eve", password="x")
    stranger = Client()
    stranger.force_login(outsider)
    assert stranger.get(f"/hls/classes/{hls['id']}/seg-0.ts").status_code == 404

    token = hls_token_issue(classroom_id=hls["id"], user_id=User.objects.get(username="ben").pk)
    response = anonymous.get(f"/hls/classes/{hls['id']}/live.m3u8", {"token": token})
    assert response.status_code == 200
    # The token rides on every segment URI, so players and CDNs need no cookie.
    uris = [s.uri for s in m3u8.loads(response.content.decode()).segments]
    assert uris == [f"seg-0.ts?token={token}", f"seg-1.ts?token={token}"]
    assert anonymous.get(f"/hls/classes/{hls['id']}/seg-1.ts", {"token": token}).status_code == 200


def test_tampered_expired_and_other_class_tokens_are_refused(hls, settings):
    anonymous = Client()
    token = hls_token_issue(classroom_id=hls["id"], user_id=User.objects.get(username="ben").pk)
    assert anonymous.get(f"/hls/classes/{hls['id']}/live.m3u8", {"token": token[:-2] + "xx"}).status_code == 404
    other = Classroom.objects.create(title="Other")
    other_token = hls_token_issue(classroom_id=other.pk, user_id=User.objects.get(username="ben").pk)
    assert anonymous.get(f"/hls/classes/{hls['id']}/live.m3u8", {"token": other_token}).status_code == 404
    settings.CLASSCAST_HLS_TOKEN_TTL_S = -1
    assert anonymous.get(f"/hls/classes/{hls['id']}/live.m3u8", {"token": token}).status_code == 404


def test_public_class_is_open_to_anyone(hls):
    Classroom.objects.filter(pk=hls["id"]).update(is_public=True)
    assert Client().get(f"/hls/classes/{hls['id']}/live.m3u8").status_code == 200


@pytest.mark.parametrize(
    "name",
    [
        "../secret.txt",
        "..%2Fsecret.txt",
        "%2e%2e%2fsecret.txt",
        "..%252Fsecret.txt",
        "%2Fetc%2Fpasswd",
        ".hidden.ts",
        "live.m3u8%00.ts",
        "secret.txt",
        "seg-0.ts/",
        "seg-9.ts",
    ],
)
def test_path_tricks_are_refused(hls, name):
    response = member_client("ben").get(f"/hls/classes/{hls['id']}/{name}")
    assert response.status_code == 404
    assert b"not for you" not in response.content


def test_no_broadcast_yet_is_a_404(demo, settings, tmp_path):
    settings.CLASSCAST_HLS_ROOT = tmp_path
    assert member_client("ben").get(f"/hls/classes/{demo['class_id']}/live.m3u8").status_code == 404


def test_playlist_with_token_keeps_tags_and_existing_queries():
    text = playlist_with_token("#EXTM3U\n#EXTINF:2.0,\na.ts\nb.ts?x=1\n", "T")
    assert text == "#EXTM3U\n#EXTINF:2.0,\na.ts?token=T\nb.ts?x=1&token=T\n"


def test_playlists_are_gzipped_for_players_that_accept_it_and_media_never(hls):
    # A long live playlist, every URI carrying the viewer's token (issue 12: playlist reloads were a third
    # of a 300 kbit/s link).
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0"]
    lines += [f"#EXTINF:2.000,\nseg-{i}.ts" for i in range(6)]
    (hls["folder"] / "live.m3u8").write_text("\n".join(lines) + "\n")
    token = hls_token_issue(classroom_id=hls["id"], user_id=User.objects.get(username="ben").pk)
    url = f"/hls/classes/{hls['id']}/live.m3u8?token={token}"
    plain = Client().get(url)
    assert plain.status_code == 200 and "Content-Encoding" not in plain and plain["Vary"] == "Accept-Encoding"
    packed = Client().get(url, HTTP_ACCEPT_ENCODING="gzip, deflate, br")
    assert packed.status_code == 200 and packed["Content-Encoding"] == "gzip" and packed["Vary"] == "Accept-Encoding"
    assert gzip.decompress(packed.content) == plain.content and len(packed.content) < len(plain.content) / 3
    assert packed["Content-Type"] == "application/vnd.apple.mpegurl"
    refused = Client().get(url, HTTP_ACCEPT_ENCODING="gzip;q=0, identity")
    assert "Content-Encoding" not in refused and refused.content == plain.content
    segment = Client().get(f"/hls/classes/{hls['id']}/seg-0.ts?token={token}", HTTP_ACCEPT_ENCODING="gzip")
    assert segment.status_code == 200 and "Content-Encoding" not in segment  # MPEG-TS does not compress
    assert "Content-Encoding" not in Client().get(url[: url.index("?")], HTTP_ACCEPT_ENCODING="gzip")  # the 404


@pytest.mark.parametrize("header, accepted", [
    ("gzip", True), ("deflate, gzip;q=0.5, br", True), ("*", True), ("GZIP", True), ("x-gzip", True),
    ("", False), ("br, deflate", False), ("gzip;q=0", False), ("gzip; q=0.000", False), ("gzip;q=nope", False),
    ("identity", False),
])
def test_accept_encoding_is_read_as_http_says(header, accepted):
    assert accepts_gzip(header) is accepted


def test_viewers_are_counted_once_per_window(hls):
    now = 1_000_000_000 + uuid.uuid4().int % 10**8 * 10  # a window of its own, whatever ran before
    for viewer in ("a", "b", "a", "c", "b"):
        viewer_seen(classroom_id=hls["id"], viewer_id=viewer, now=now)
    assert viewers_count(classroom_id=hls["id"], now=now) == 3
    # Playlist polls count too: two members polling three times are two viewers.
    for _ in range(3):
        for username in ("ben", "cleo"):
            member_client(username).get(f"/hls/classes/{hls['id']}/live.m3u8")
    assert viewers_count(classroom_id=hls["id"]) >= 2


def test_broadcast_status_api(hls):
    ben = member_client("ben").get(f"/api/classes/{hls['id']}/broadcast/").json()
    assert ben["hls"]["live"] is True and ben["broadcast"] is None
    assert ben["hls"]["playlist_url"].startswith(f"/hls/classes/{hls['id']}/live.m3u8?token=")
    assert "studio" not in ben and "health" not in ben  # the stream key is the instructor's
    ada = member_client("ada").get(f"/api/classes/{hls['id']}/broadcast/").json()
    assert ada["studio"]["stream_key"] == Classroom.objects.get(pk=hls["id"]).stream_key
    assert Client().get(f"/api/classes/{hls['id']}/broadcast/").status_code == 404  # as for no such class
