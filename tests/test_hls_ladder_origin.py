"""The origin with a quality ladder: the master playlist at the session's `live.m3u8`, each rung's
playlists, segments and parts one folder down, with the same access checks, tokens carried onto every
URI (the master's variant URIs too), blocking reloads per rung, and no path tricks (a symlinked rung
folder or file is never followed)."""
from __future__ import annotations

import asyncio
import os

import m3u8
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client

from classroom.hls_views import hls_access_forget, hls_token_issue, hls_tokens_revoke
from classroom.models import Classroom, Membership
from classroom.selectors import actor_get
from classroom.services.ingest import session_folder
from classroom.services.ladder import ladder_parse, ladder_renditions
from classroom.services.sessions import session_start
from hls_packager.storage import master_write, write_atomic

from .test_hls_low_latency import CountingApp, asgi_get, sample_playlist

pytestmark = pytest.mark.usefixtures("fast_passwords")
User = get_user_model()
RUNGS = ladder_parse("720p,360p,audio", width=1280, height=720, fps=30, video_bitrate=2_500_000, audio_bitrate=128_000)


@pytest.fixture
def ladder(transactional_db, settings, tmp_path):
    from classroom.services.demo import demo_seed

    settings.CLASSCAST_HLS_ROOT = tmp_path / "hls"
    cid = demo_seed()["class_id"]
    ada = User.objects.get(username="ada")
    session = session_start(classroom_id=cid, actor=actor_get(user=ada, classroom_id=cid))
    folder = settings.CLASSCAST_HLS_ROOT / session_folder(classroom_id=cid, session_id=session.pk)
    for rung in RUNGS:
        (folder / rung.name).mkdir(parents=True)
        write_atomic(folder / rung.name / "live.m3u8", sample_playlist())
        (folder / rung.name / "seg-4.ts").write_bytes(rung.name.encode() * 188)
        (folder / rung.name / "seg-5.part1.ts").write_bytes(b"\x47" * 188)
    master_write(folder, ladder_renditions(RUNGS))  # as the packager writes it when a rung publishes
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "live.m3u8").write_text("#EXTM3U\nnot for you\n")
    (outside / "seg-4.ts").write_bytes(b"not for you")
    hls_access_forget()
    yield {"id": cid, "folder": folder, "outside": outside, "url": f"/hls/classes/{cid}/"}
    hls_access_forget()


def member(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


def test_a_member_gets_the_master_and_every_rung_with_its_token_carried_along(ladder):
    token = hls_token_issue(classroom_id=ladder["id"], user_id=User.objects.get(username="ben").pk)
    anyone = Client()  # no cookie: the token alone, as an outside player or a CDN would ask
    response = anyone.get(ladder["url"] + "live.m3u8", {"token": token})
    assert response.status_code == 200 and response["Cache-Control"] == "no-cache, max-age=1"
    master = m3u8.loads(response.content.decode())
    assert [p.uri for p in master.playlists] == [f"{r.name}/live.m3u8?token={token}" for r in RUNGS]
    for variant, rung in zip(master.playlists, RUNGS):
        playlist = anyone.get(ladder["url"] + variant.uri)  # the URI as the master gives it, token included
        assert playlist.status_code == 200, variant.uri
        pl = m3u8.loads(playlist.content.decode())
        assert pl.segments[-2].uri == f"seg-4.ts?token={token}"
        assert pl.preload_hint.uri == f"seg-5.part2.ts?token={token}"
        assert all(part.uri.endswith(f"?token={token}") for s in pl.segments for part in s.parts)
        segment = anyone.get(ladder["url"] + f"{rung.name}/" + pl.segments[-2].uri)
        assert segment.status_code == 200 and segment.content == rung.name.encode() * 188
        assert segment["Cache-Control"] == "public, max-age=31536000, immutable"
        assert anyone.get(ladder["url"] + f"{rung.name}/seg-5.part1.ts", {"token": token}).status_code == 200
    # A member with a session cookie gets the same without a token.
    assert member("cleo").get(ladder["url"] + "360p/seg-4.ts").content == b"360p" * 188


def test_strangers_and_revoked_viewers_get_no_rung(ladder):
    stranger = Client()
    stranger.force_login(User.objects.create_user("eve", password="x"))
    for name in ("live.m3u8", "360p/live.m3u8", "360p/seg-4.ts", "audio/seg-5.part1.ts"):
        assert Client().get(ladder["url"] + name).status_code == 404, name
        assert stranger.get(ladder["url"] + name).status_code == 404, name
    ben = User.objects.get(username="ben")
    token = hls_token_issue(classroom_id=ladder["id"], user_id=ben.pk)
    assert Client().get(ladder["url"] + "360p/seg-4.ts", {"token": token}).status_code == 200
    Membership.objects.filter(user=ben, classroom_id=ladder["id"]).delete()
    hls_access_forget()  # (otherwise refused within ACCESS_TTL_S)
    assert Client().get(ladder["url"] + "360p/seg-4.ts", {"token": token}).status_code == 403
    hls_tokens_revoke(classroom_id=ladder["id"])


@pytest.mark.parametrize("name", [
    "360p/../../outside/live.m3u8", "360p/..%2F..%2Foutside%2Flive.m3u8", "..%2Foutside/live.m3u8",
    "360p/360p/live.m3u8", "a/b/c.ts", "/360p/live.m3u8", ".360p/live.m3u8", "360p/", "360p",
    "nope/live.m3u8", "linked/live.m3u8", "linked/seg-4.ts", "720p/leak.ts", "720p/secret.m3u8",
])
def test_path_tricks_in_rung_folders_are_refused(ladder, name):
    os.symlink(ladder["outside"], ladder["folder"] / "linked", target_is_directory=True)  # a rung that leads out
    os.symlink(ladder["outside"] / "seg-4.ts", ladder["folder"] / "720p" / "leak.ts")
    os.symlink(ladder["outside"] / "live.m3u8", ladder["folder"] / "720p" / "secret.m3u8")
    response = member("ben").get(ladder["url"] + name)
    assert response.status_code == 404, name
    assert b"not for you" not in response.content


async def test_blocking_reloads_are_held_per_rung_and_refused_on_the_master(ladder):
    client = AsyncClient()
    await sync_to_async(Classroom.objects.filter(pk=ladder["id"]).update)(is_public=True)
    url = ladder["url"] + "360p/live.m3u8"
    held = asyncio.create_task(client.get(url, {"_HLS_msn": "15", "_HLS_part": "2"}))
    await asyncio.sleep(0.3)
    assert not held.done()
    write_atomic(ladder["folder"] / "720p" / "live.m3u8", sample_playlist(open_parts=3))  # another rung: not this one
    await asyncio.sleep(0.3)
    assert not held.done()
    write_atomic(ladder["folder"] / "360p" / "live.m3u8", sample_playlist(open_parts=3))
    response = await asyncio.wait_for(held, timeout=3)
    assert response.status_code == 200 and m3u8.loads(response.content.decode()).preload_hint.uri == "seg-5.part3.ts"
    # The hinted part of a rung is held until that rung writes it.
    part = asyncio.create_task(client.get(ladder["url"] + "audio/seg-5.part2.ts"))
    await asyncio.sleep(0.3)
    assert not part.done()
    write_atomic(ladder["folder"] / "audio" / "seg-5.part2.ts", b"\x47" * 376)  # as the packager does:
    write_atomic(ladder["folder"] / "audio" / "live.m3u8", sample_playlist(open_parts=3))  # the part, then its listing
    assert (await asyncio.wait_for(part, timeout=3)).content == b"\x47" * 376
    master = await client.get(ladder["url"] + "live.m3u8", {"_HLS_msn": "1"})
    assert master.status_code == 400


async def test_the_fast_path_serves_rung_files_to_remembered_viewers(ladder):
    await sync_to_async(Classroom.objects.filter(pk=ladder["id"]).update)(is_public=True)
    django_app = CountingApp()
    from classroom.hls_views import hls_fast_path

    app = hls_fast_path(django_app)
    first = await asgi_get(app, ladder["url"] + "live.m3u8")
    assert first[0] == 200 and django_app.calls == 1
    status, headers, body = await asgi_get(app, ladder["url"] + "360p/seg-4.ts")
    assert status == 200 and body == b"360p" * 188 and django_app.calls == 1  # answered in front of Django
    assert (await asgi_get(app, ladder["url"] + "360p/..%2F..%2Foutside%2Fseg-4.ts"))[0] == 404


def test_live_state_follows_the_top_rung(ladder):
    state = member("ben").get(f"/api/classes/{ladder['id']}/broadcast/").json()["hls"]
    assert state["live"] is True and state["ended"] is False
    write_atomic(ladder["folder"] / "720p" / "vod.m3u8", sample_playlist(ended=True))  # the program ended
    state = member("ben").get(f"/api/classes/{ladder['id']}/broadcast/").json()["hls"]
    assert state["live"] is False and state["ended"] is True
