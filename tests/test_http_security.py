"""The HTTP edges as an attacker tries them (issue 11): HLS tokens that name their holder and die with
their access, symlinks in HLS folders, the download audit under byte ranges, 404 for what one may not
see (never a 403 that tells a class or recording exists), who reads /metrics, and where the stand-alone
processes' metrics ports listen."""
from __future__ import annotations

import asyncio
import io
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest
from channels.db import database_sync_to_async as db_async  # closes its connection: the test DB can be dropped
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from classroom import hls_views
from classroom.hls_views import ACCESS_TTL_S, hls_fast_path, hls_token_issue
from classroom.models import AuditEntry, Classroom, LiveSession, Membership, Recording, RecordingFile
from classroom.selectors import actor_get
from classroom.services.broadcast import stream_key_rotate
from classroom.services.ingest import session_folder
from hls_packager.storage import write_atomic

from .conftest import free_port, wait_until
from .test_hls_low_latency import CountingApp, asgi_get, sample_playlist

pytestmark = pytest.mark.usefixtures("fast_passwords")
User = get_user_model()
LIVE = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:2.000,\nseg-0.ts\n"
SEGMENT = b"\x47" * 188 * 4


def _class_world(tmp_path: Path, *, playlist: str = LIVE) -> dict[str, Any]:
    """A private class (ada teaches, ben studies, eve is in no class) live with HLS output on disk."""
    users = {name: User.objects.create_user(name, password="pw", is_staff=name == "root") for name in
             ("ada", "ben", "eve", "root")}
    classroom = Classroom.objects.create(title="Acoustics", is_public=False)
    Membership.objects.create(classroom=classroom, user=users["ada"], role="instructor")
    Membership.objects.create(classroom=classroom, user=users["ben"], role="student")
    session = LiveSession.objects.create(classroom=classroom, status="live", started_at=timezone.now())
    hls_root = tmp_path / "hls"
    folder = hls_root / session_folder(classroom_id=classroom.pk, session_id=session.pk)
    folder.mkdir(parents=True)
    write_atomic(folder / "live.m3u8", playlist)
    (folder / "seg-0.ts").write_bytes(SEGMENT)
    secret = tmp_path / "secret.ts"  # outside every HLS folder
    secret.write_text("the secret outside the HLS root")
    return {"users": users, "classroom": classroom, "id": classroom.pk, "folder": folder, "hls_root": hls_root,
            "secret": secret, "url": f"/hls/classes/{classroom.pk}/"}


@pytest.fixture
def world(db, settings, tmp_path) -> dict[str, Any]:
    data = _class_world(tmp_path)
    settings.CLASSCAST_HLS_ROOT = data["hls_root"]
    return data


@pytest.fixture
def async_world(transactional_db, settings, tmp_path) -> dict[str, Any]:
    """Committed rows (the async views read them from other threads), a low-latency playlist."""
    data = _class_world(tmp_path, playlist=sample_playlist())
    settings.CLASSCAST_HLS_ROOT = data["hls_root"]
    return data


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def expire_remembered_access() -> None:
    """What ACCESS_TTL_S passing does to the origin's memory, without waiting for it."""
    for key, (_, folder) in list(hls_views._access_cache.items()):
        hls_views._access_cache[key] = (0.0, folder)


# --- 1. HLS tokens name their holder ------------------------------------------------------------------------

def test_a_students_token_stops_playing_within_the_memory_ttl_once_the_membership_is_deleted(world):
    ben = world["users"]["ben"]
    token = hls_token_issue(classroom_id=world["id"], user_id=ben.pk)
    player = Client()  # an outside player: the token alone, no cookie
    assert player.get(world["url"] + "live.m3u8", {"token": token}).status_code == 200
    Membership.objects.filter(user=ben).delete()
    refused = wait_until(
        lambda: (r := player.get(world["url"] + "seg-0.ts", {"token": token})).status_code != 200 and r,
        timeout=ACCESS_TTL_S + 5, every=0.1, what="the revoked token refused",
    )
    assert refused.status_code == 403
    assert b"no longer gives access" in refused.content


def test_an_inactive_users_token_is_refused(world):
    ben = world["users"]["ben"]
    token = hls_token_issue(classroom_id=world["id"], user_id=ben.pk)
    User.objects.filter(pk=ben.pk).update(is_active=False)
    assert Client().get(world["url"] + "live.m3u8", {"token": token}).status_code == 403


def test_the_member_page_hands_out_a_token_naming_the_viewer(world):
    body = logged_in(world["users"]["ben"]).get(f"/api/classes/{world['id']}/broadcast/").json()
    token = body["hls"]["playlist_url"].split("token=", 1)[1]
    assert hls_views.hls_token_read(token=token, classroom_id=world["id"]).user_id == world["users"]["ben"].pk


def test_an_operator_token_dies_when_tokens_are_revoked_or_the_stream_key_rotates(world):
    out = io.StringIO()
    call_command("stream_key", str(world["id"]), stdout=out)
    playlist = out.getvalue().strip().splitlines()[-1]
    assert playlist.startswith(world["url"] + "live.m3u8?token=")
    player = Client()
    assert player.get(playlist).status_code == 200

    out = io.StringIO()
    call_command("stream_key", str(world["id"]), "--revoke-tokens", stdout=out, stderr=io.StringIO())
    hls_views.hls_access_forget()  # this test's process is the web process too: skip the 2 s memory
    assert player.get(playlist).status_code == 403
    fresh = out.getvalue().strip().splitlines()[-1]
    assert fresh != playlist and player.get(fresh).status_code == 200

    ada = world["users"]["ada"]
    stream_key_rotate(classroom_id=world["id"], actor=actor_get(user=ada, classroom_id=world["id"]))
    hls_views.hls_access_forget()
    assert player.get(fresh).status_code == 403
    # A member's token does not depend on the stream key.
    member_token = hls_token_issue(classroom_id=world["id"], user_id=ada.pk)
    assert player.get(world["url"] + "live.m3u8", {"token": member_token}).status_code == 200


def test_an_administrator_revokes_operator_tokens_in_the_admin(world):
    token = hls_views.hls_operator_token_issue(classroom_id=world["id"])
    admin = logged_in(User.objects.create_superuser("boss", password="pw"))
    response = admin.post(
        "/admin/classroom/classroom/", {"action": "revoke_hls_tokens", "_selected_action": [world["id"]]}
    )
    assert response.status_code == 302
    assert Classroom.objects.get(pk=world["id"]).hls_token_generation == 1
    assert Client().get(world["url"] + "live.m3u8", {"token": token}).status_code == 403


def test_old_format_and_made_up_tokens_are_refused(world):
    old = signing.dumps({"c": world["id"]}, salt="classcast.hls", compress=True)  # the class-wide token of before
    holderless = signing.dumps({"c": world["id"]}, salt="classcast.hls.v2", compress=True)
    for token in (old, holderless, "forged"):
        assert Client().get(world["url"] + "live.m3u8", {"token": token}).status_code == 404, token


async def _held_request_after_revocation(world: dict[str, Any], app: Any) -> int:
    """A blocking reload held while the viewer's access is revoked and the memory runs out: its answer."""
    ben = await db_async(User.objects.get)(username="ben")
    token = hls_token_issue(classroom_id=world["id"], user_id=ben.pk)
    url = world["url"] + "live.m3u8"
    assert (await asgi_get(app, url, f"token={token}"))[0] == 200  # decided by Django, remembered
    held = asyncio.create_task(asgi_get(app, url, f"token={token}&_HLS_msn=15&_HLS_part=2"))
    await asyncio.sleep(0.3)
    assert not held.done()
    await db_async(Membership.objects.filter(user=ben).delete)()
    expire_remembered_access()
    write_atomic(world["folder"] / "live.m3u8", sample_playlist(open_parts=3))  # what it waits for comes
    status, _, _ = await asyncio.wait_for(held, timeout=5)
    return status


async def test_a_request_held_past_the_memory_is_decided_again_on_the_fast_path(async_world):
    django_app = CountingApp()
    assert await _held_request_after_revocation(async_world, hls_fast_path(django_app)) == 403
    assert django_app.calls == 2  # the first request, and the held one handed back to Django


async def test_a_request_held_past_the_memory_is_decided_again_in_the_view(async_world):
    from django.core.asgi import get_asgi_application

    assert await _held_request_after_revocation(async_world, get_asgi_application()) == 403


async def test_the_fast_path_stops_serving_a_revoked_viewer(async_world):
    django_app = CountingApp()
    app = hls_fast_path(django_app)
    ben = await db_async(User.objects.get)(username="ben")
    query = f"token={hls_token_issue(classroom_id=async_world['id'], user_id=ben.pk)}"
    url = async_world["url"] + "live.m3u8"
    assert (await asgi_get(app, url, query))[0] == 200
    assert (await asgi_get(app, url, query))[0] == 200 and django_app.calls == 1  # remembered: the fast path
    await db_async(Membership.objects.filter(user=ben).delete)()
    expire_remembered_access()
    assert (await asgi_get(app, url, query))[0] == 403 and django_app.calls == 2


# --- 2. no symlinks out of an HLS folder ---------------------------------------------------------------------

def _symlinks(world: dict[str, Any]) -> list[str]:
    folder = world["folder"]
    (folder / "leak.ts").symlink_to(world["secret"])
    (folder / "host.ts").symlink_to("/etc/hostname")
    (folder / "leak.m3u8").symlink_to(world["secret"])
    return ["leak.ts", "host.ts", "leak.m3u8"]


def test_symlinks_in_an_hls_folder_are_not_followed(world):
    names = _symlinks(world)
    ben = logged_in(world["users"]["ben"])
    assert ben.get(world["url"] + "seg-0.ts").status_code == 200
    hostname = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else b"\0never"
    for name in names:
        response = ben.get(world["url"] + name)
        assert response.status_code == 404, name
        assert b"secret" not in response.content and hostname not in response.content


def test_a_symlinked_live_playlist_is_not_served(world):
    live = world["folder"] / "live.m3u8"
    outside = world["secret"].with_name("outside.m3u8")
    outside.write_text(LIVE.replace("seg-0.ts", "secret-seg.ts"))
    live.unlink()
    live.symlink_to(outside)
    response = logged_in(world["users"]["ben"]).get(world["url"] + "live.m3u8")
    assert response.status_code == 404 and b"secret-seg" not in response.content
    body = logged_in(world["users"]["ben"]).get(f"/api/classes/{world['id']}/broadcast/").json()
    assert body["hls"]["live"] is False


def test_a_session_folder_that_is_a_symlink_is_not_served(world, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_atomic(elsewhere / "live.m3u8", LIVE)
    (elsewhere / "seg-0.ts").write_bytes(b"outside the root")
    folder = world["folder"]
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()
    folder.symlink_to(elsewhere)
    ben = logged_in(world["users"]["ben"])
    assert ben.get(world["url"] + "live.m3u8").status_code == 404
    response = ben.get(world["url"] + "seg-0.ts")
    assert response.status_code == 404 and b"outside the root" not in response.content


async def test_symlinks_are_not_followed_on_the_fast_path_either(async_world):
    names = _symlinks(async_world)
    django_app = CountingApp()
    app = hls_fast_path(django_app)
    ben = await db_async(User.objects.get)(username="ben")
    query = f"token={hls_token_issue(classroom_id=async_world['id'], user_id=ben.pk)}"
    assert (await asgi_get(app, async_world["url"] + "live.m3u8", query))[0] == 200
    for name in names:
        status, _, body = await asgi_get(app, async_world["url"] + name, query)
        assert status == 404 and b"secret" not in body, name
    assert django_app.calls == 1  # all answered by the fast path


# --- 3. the download audit and byte ranges -------------------------------------------------------------------

@pytest.fixture
def recording(world, settings, tmp_path) -> Recording:
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages

    settings.STORAGES = {**settings.STORAGES, "recordings": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "store")}}}
    session = LiveSession.objects.filter(classroom=world["classroom"]).get()
    rec = Recording.objects.create(classroom=world["classroom"], session=session, status="published",
                                   started_at=timezone.now(), duration_ms=1000)
    storages["recordings"].save(f"{rec.folder}/program.mp4", ContentFile(bytes(range(256)) * 64))
    RecordingFile.objects.create(recording=rec, role="program", name="program.mp4", stored=True, size=256 * 64)
    return rec


def download_link(recording: Recording, user: Any) -> str:
    from classroom.services.recording_access import file_link_sign

    query = file_link_sign(recording_id=recording.pk, name="program.mp4", user_id=user.pk, download=True)
    return f"/recordings/{recording.pk}/files/program.mp4?{query}"


def downloads(recording: Recording) -> int:
    return AuditEntry.objects.filter(action="recording.download", recording_id=recording.pk).count()


def test_a_download_starting_past_byte_zero_is_audited(world, recording):
    response = Client().get(download_link(recording, world["users"]["ada"]), HTTP_RANGE="bytes=100-200")
    assert response.status_code == 206
    assert downloads(recording) == 1
    entry = AuditEntry.objects.get(action="recording.download", recording_id=recording.pk)
    assert entry.actor_id == world["users"]["ada"].pk and entry.target == "program.mp4"


def test_a_browser_download_with_continuation_ranges_is_audited_once(world, recording):
    url, client = download_link(recording, world["users"]["ada"]), Client()
    assert client.get(url).status_code == 200
    for first in (0, 4096, 9000):
        assert client.get(url, HTTP_RANGE=f"bytes={first}-").status_code == 206
    assert downloads(recording) == 1
    # The next link handed out (the page opened again) is another download.
    assert client.get(download_link(recording, world["users"]["ada"]), HTTP_RANGE="bytes=5000-").status_code == 206
    assert downloads(recording) == 2


# --- 4. 404, not 403, for what one may not see ----------------------------------------------------------------

def _answer(response: Any) -> tuple[int, str, bytes]:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response.status_code, response.get("Content-Type", ""), body


def test_a_class_one_may_not_see_answers_as_one_that_does_not_exist(world, recording):
    cid, missing = world["id"], world["id"] + 1000
    rid, missing_rec = recording.pk, recording.pk + 1000
    eve = logged_in(world["users"]["eve"])
    gets = ["/classes/{c}/", "/classes/{c}/console/", "/classes/{c}/watch/", "/api/classes/{c}/ice-servers/",
            "/api/classes/{c}/broadcast/", "/hls/classes/{c}/live.m3u8", "/hls/classes/{c}/seg-0.ts",
            "/recordings/{r}/", "/recordings/{r}/status/", "/recordings/{r}/review.json"]
    posts = ["/classes/{c}/recording-settings/", "/recordings/{r}/share/", "/recordings/{r}/delete/",
             "/recordings/{r}/retry/"]
    for client in (eve, Client()):
        for template in gets + posts:
            fetch = client.post if template in posts else client.get
            if client is not eve and not template.startswith(("/api/classes/{c}/broadcast", "/hls/")):
                continue  # the rest need a login first (a redirect, whatever the id)
            seen = _answer(fetch(template.format(c=cid, r=rid)))
            unknown = _answer(fetch(template.format(c=missing, r=missing_rec)))
            assert seen == unknown, template
            assert seen[0] == 404, template
    # A token for one class says nothing about another class.
    token = hls_token_issue(classroom_id=cid, user_id=world["users"]["ben"].pk)
    other = Classroom.objects.create(title="Other")
    assert _answer(Client().get(f"/hls/classes/{other.pk}/live.m3u8", {"token": token})) == \
        _answer(Client().get(f"/hls/classes/{missing}/live.m3u8", {"token": token}))


def test_a_member_lacking_a_right_is_still_told_so(world):
    ben = logged_in(world["users"]["ben"])
    assert ben.get(f"/classes/{world['id']}/console/").status_code == 403
    assert ben.post(f"/classes/{world['id']}/recording-settings/", {"auto_record": "on"}).status_code == 403
    response = ben.get(f"/api/classes/{world['id']}/ice-servers/")
    assert response.status_code == 403 and "stage" in response.json()["error"]


# --- 5. who reads /metrics; where the other processes' metrics listen ----------------------------------------

@pytest.mark.once
def test_metrics_without_a_token_are_for_staff_only(world, settings):
    settings.CLASSCAST_METRICS_TOKEN = ""
    assert Client().get("/metrics").status_code == 403
    assert logged_in(world["users"]["ada"]).get("/metrics").status_code == 403  # an instructor is not staff
    response = logged_in(world["users"]["root"]).get("/metrics")
    assert response.status_code == 200 and b"classcast_live_sessions" in response.content


@pytest.mark.once
def test_metrics_with_a_token_take_the_bearer_or_staff(world, settings):
    settings.CLASSCAST_METRICS_TOKEN = "scrape-me"
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200
    refused = logged_in(world["users"]["ada"]).get("/metrics", HTTP_AUTHORIZATION="Bearer nope")
    assert refused.status_code == 401 and refused["WWW-Authenticate"].startswith("Bearer")
    assert logged_in(world["users"]["root"]).get("/metrics").status_code == 200


def listening(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at `port` (from /proc/net/tcp: what the kernel says)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, port_hex = local.partition(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.fixture
def metrics_servers(monkeypatch) -> Iterator[list]:
    """The prometheus_client servers the commands start (stopped afterwards); the commands' main loops
    (the SFU, the RTMP ingest) are not what is tested here and are skipped."""
    import prometheus_client

    from classroom.management.commands import hls_packager, media_node

    started: list = []

    def start(port: int, addr: str = "0.0.0.0", **kwargs: Any) -> Any:
        server = prometheus_client.start_http_server(port, addr=addr, **kwargs)
        started.append(server)
        return server

    async def skip(self: Any, *args: Any) -> None:
        return None

    for module in (media_node, hls_packager):
        monkeypatch.setattr(module, "start_http_server", start)
        monkeypatch.setattr(module.Command, "_run", skip)
    yield started
    for httpd, thread in started:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.mark.once
@pytest.mark.parametrize("command", ["media_node", "hls_packager"])
def test_stand_alone_metrics_ports_listen_on_loopback_by_default(metrics_servers, command):
    port = free_port()
    call_command(command, metrics_port=port, stdout=io.StringIO())
    assert listening(port) == {"127.0.0.1"}
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # (not scraped: that reads the database)


@pytest.mark.once
@pytest.mark.parametrize("command", ["media_node", "hls_packager"])
def test_stand_alone_metrics_ports_listen_where_configured(metrics_servers, settings, command):
    settings.CLASSCAST_METRICS_BIND = "127.0.0.2"
    port = free_port()
    call_command(command, metrics_port=port, stdout=io.StringIO())
    assert listening(port) == {"127.0.0.2"}
