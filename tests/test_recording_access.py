"""Who sees which recording; signed, short-lived file links; path tricks; byte ranges; the audit log;
sharing with students; deleting by hand and by retention."""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.core.files.storage import storages
from django.test import Client
from django.utils import timezone

from .recording_fixtures import published_recording


@pytest.fixture
def world(db, tmp_path, settings, fast_passwords):
    from classroom.models import Classroom, LiveSession, Membership

    settings.STORAGES = {**settings.STORAGES, "recordings": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "store")}}}
    settings.CLASSCAST_RECORDING_SPOOL = tmp_path / "spool"
    User = get_user_model()
    users = {
        name: User.objects.create_user(name, password="pw", is_staff=(name == "admin"), first_name=name.title())
        for name in ("admin", "ada", "ben", "olga", "zed")
    }
    classroom = Classroom.objects.create(title="Physics")
    other = Classroom.objects.create(title="Chemistry")
    Membership.objects.create(classroom=classroom, user=users["ada"], role="instructor")
    Membership.objects.create(classroom=classroom, user=users["ben"], role="student")
    Membership.objects.create(classroom=other, user=users["olga"], role="instructor")
    session = LiveSession.objects.create(classroom=classroom, status="ended", started_at=timezone.now())
    recording = published_recording(classroom_id=classroom.pk, session_id=session.pk, user_id=users["ada"].pk,
                                     work=tmp_path / "work")
    return {"users": users, "recording": recording, "classroom": classroom}


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def links(client: Client, recording) -> dict[str, str]:
    """The signed download links on the recording page, by file name."""
    import re

    html = client.get(f"/recordings/{recording.pk}/").content.decode()
    found = re.findall(r'<a class="download" href="([^"]+)">([^<]+)</a>', html)
    return {name: href.replace("&amp;", "&") for href, name in found}


def test_admin_reviews_and_downloads_and_it_is_audited(world):
    from classroom.models import AuditEntry

    admin, recording = world["users"]["admin"], world["recording"]
    client = client_for(admin)
    page = client.get(f"/recordings/{recording.pk}/")
    assert page.status_code == 200
    assert b'id="review-data"' in page.content and b"program.mp4" in page.content
    urls = links(client, recording)
    assert set(urls) == {"program.mp4", f"tracks/u{world['users']['ada'].pk}-video-1.webm", "manifest.json"}
    response = Client().get(urls["program.mp4"])  # the link alone is enough: players and tools follow it
    body = b"".join(response.streaming_content)
    assert response.status_code == 200 and response["Content-Type"] == "video/mp4"
    assert "attachment" in response["Content-Disposition"]
    assert body == storages["recordings"].open(f"{recording.folder}/program.mp4").read()
    actions = list(AuditEntry.objects.filter(recording_id=recording.pk).values_list("action", "target", "actor_id"))
    assert ("recording.view", "", admin.pk) in actions
    assert ("recording.download", "program.mp4", admin.pk) in actions
    # Administrators read the audit log; nobody else does.
    log = client.get("/recordings/audit/")
    assert log.status_code == 200 and b"recording.download" in log.content
    assert client_for(world["users"]["ada"]).get("/recordings/audit/").status_code == 403


def test_who_sees_what(world):
    users, recording = world["users"], world["recording"]
    # The class's instructor: yes. Another class's instructor, a student, an outsider: no, and they hear
    # what they would for a recording that does not exist.
    assert client_for(users["ada"]).get(f"/recordings/{recording.pk}/").status_code == 200
    for name in ("olga", "ben", "zed"):
        assert client_for(users[name]).get(f"/recordings/{recording.pk}/").status_code == 404, name
    assert Client().get(f"/recordings/{recording.pk}/").status_code == 302  # to the login page
    # Lists show only what one may see.
    assert f'data-recording-id="{recording.pk}"'.encode() in client_for(users["ada"]).get("/recordings/").content
    for name in ("olga", "ben"):
        assert b"data-recording-id" not in client_for(users[name]).get("/recordings/").content
    # A student acting above themself: sharing is for the instructor only (and unshared, ben cannot see it).
    assert client_for(users["ben"]).post(f"/recordings/{recording.pk}/share/", {"shared": "1"}).status_code == 404
    # Once the instructor shares it with the class, its students see it (others still do not).
    assert client_for(users["ada"]).post(f"/recordings/{recording.pk}/share/", {"shared": "1"}).status_code == 302
    assert client_for(users["ben"]).get(f"/recordings/{recording.pk}/").status_code == 200
    assert client_for(users["zed"]).get(f"/recordings/{recording.pk}/").status_code == 404
    assert client_for(users["ben"]).post(f"/recordings/{recording.pk}/delete/").status_code == 403  # sees it; may not


def test_links_expire_and_cannot_be_tampered_with(world, settings):
    users, recording = world["users"], world["recording"]
    client = client_for(users["ada"])
    url = links(client, recording)["manifest.json"]
    assert Client().get(url).status_code == 200
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}

    def with_(path: str = parts.path, **changes: str) -> int:
        q = "&".join(f"{k}={v}" for k, v in {**query, **changes}.items())
        return Client().get(f"{path}?{q}").status_code

    assert with_(s=query["s"][:-2] + "xx") == 403  # forged signature
    assert with_(e=str(int(query["e"]) + 3600)) == 403  # stretched expiry
    assert with_(u=str(users["admin"].pk)) == 403  # someone else's link
    assert with_(dl="0" if query["dl"] == "1" else "1") == 403
    assert with_(path=parts.path.replace("manifest.json", "program.mp4")) == 403  # another file, same signature
    assert Client().get(parts.path).status_code == 403  # no signature at all
    # Expired: a link signed a while ago no longer works.
    from classroom.services.recording_access import file_link_sign

    old = file_link_sign(recording_id=recording.pk, name="manifest.json", user_id=users["ada"].pk, download=True, ttl_s=-1)
    assert Client().get(f"{parts.path}?{old}").status_code == 403
    # A link stops working when its user loses access.
    from classroom.models import Membership

    Membership.objects.filter(user=users["ada"]).delete()
    assert Client().get(url).status_code == 404


@pytest.mark.parametrize("trick", [
    "../../../etc/passwd", "tracks/../manifest.json", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd",
    "%252e%252e/secret", "/etc/passwd", "%2Fetc%2Fpasswd", "tracks\\..\\manifest.json", "tracks/./x.webm",
    "C:/windows/win.ini", "tracks//x.webm", "manifest.json%00.jpg",
])
def test_path_tricks_in_file_urls_are_refused(world, trick):
    users, recording = world["users"], world["recording"]
    from classroom.services.recording_access import file_link_sign

    # Even a correctly signed link to a tricky name is refused before anything is opened.
    query = file_link_sign(recording_id=recording.pk, name=trick, user_id=users["admin"].pk, download=True)
    response = Client().get(f"/recordings/{recording.pk}/files/{trick}?{query}")
    assert response.status_code in (400, 404), (trick, response.status_code)
    assert b"root:" not in response.content


def test_unknown_file_is_not_found_even_if_signed(world):
    from classroom.services.recording_access import file_link_sign

    users, recording = world["users"], world["recording"]
    query = file_link_sign(recording_id=recording.pk, name="tracks/nope.webm", user_id=users["admin"].pk, download=False)
    assert Client().get(f"/recordings/{recording.pk}/files/tracks/nope.webm?{query}").status_code == 404


def test_players_seek_with_byte_ranges(world):
    users, recording = world["users"], world["recording"]
    client = client_for(users["ada"])
    name = f"tracks/u{users['ada'].pk}-video-1.webm"
    from classroom.services.recording_access import file_link_sign

    url = f"/recordings/{recording.pk}/files/{name}?" + file_link_sign(
        recording_id=recording.pk, name=name, user_id=users["ada"].pk, download=False)
    whole = storages["recordings"].open(f"{recording.folder}/{name}").read()
    part = client.get(url, HTTP_RANGE="bytes=100-199")
    assert part.status_code == 206 and part["Content-Range"] == f"bytes 100-199/{len(whole)}"
    assert b"".join(part.streaming_content) == whole[100:200]
    tail = client.get(url, HTTP_RANGE="bytes=-50")
    assert b"".join(tail.streaming_content) == whole[-50:]
    assert client.get(url, HTTP_RANGE=f"bytes={len(whole) + 10}-").status_code == 416
    full = client.get(url)
    assert full.status_code == 200 and full["Accept-Ranges"] == "bytes" and full["Content-Type"] == "video/webm"
    assert "attachment" not in full.get("Content-Disposition", "")


def test_delete_by_hand_and_by_retention_is_logged(world):
    from classroom.models import AuditEntry, Recording
    from classroom.services.recording_access import recordings_expire

    users, recording = world["users"], world["recording"]
    store = storages["recordings"]
    assert store.exists(f"{recording.folder}/program.mp4")
    assert client_for(users["olga"]).post(f"/recordings/{recording.pk}/delete/").status_code == 404
    assert client_for(users["ada"]).post(f"/recordings/{recording.pk}/delete/").status_code == 302
    assert not Recording.objects.filter(pk=recording.pk).exists()
    assert not store.exists(f"{recording.folder}/program.mp4")
    entry = AuditEntry.objects.get(action="recording.delete")
    assert entry.recording_id == recording.pk and entry.actor_id == users["ada"].pk

    # Retention: an expired one goes with the periodic task, a fresh one stays.
    from classroom.models import LiveSession

    session = LiveSession.objects.create(classroom=world["classroom"], status="ended", started_at=timezone.now())
    import tempfile
    from pathlib import Path

    work = Path(tempfile.mkdtemp())
    old = published_recording(classroom_id=world["classroom"].pk, session_id=session.pk, user_id=users["ada"].pk, work=work)
    Recording.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    fresh = published_recording(classroom_id=world["classroom"].pk, session_id=session.pk, user_id=users["ada"].pk,
                                work=work / "b")
    assert recordings_expire() == [old.pk]
    assert not Recording.objects.filter(pk=old.pk).exists() and Recording.objects.filter(pk=fresh.pk).exists()
    assert not store.exists(f"{old.folder}/program.mp4") and store.exists(f"{fresh.folder}/program.mp4")
    expired = AuditEntry.objects.get(action="recording.expire")
    assert expired.recording_id == old.pk and expired.actor is None and expired.actor_name == "system"


def test_recordings_list_filters(world):
    users, recording = world["users"], world["recording"]
    client = client_for(users["admin"])
    marker = f'data-recording-id="{recording.pk}"'.encode()
    assert marker in client.get("/recordings/?q=physics").content
    assert marker in client.get("/recordings/?q=ada").content  # by instructor
    assert marker not in client.get("/recordings/?q=chemistry").content
    assert marker in client.get(f"/recordings/?class={world['classroom'].pk}&status=published").content
    today = timezone.now().date()
    assert marker in client.get(f"/recordings/?from={today}&to={today}").content
    assert marker not in client.get(f"/recordings/?from={today + timedelta(days=1)}").content
    assert client.get("/recordings/?from=not-a-date&q=" + "x" * 500).status_code == 200


def test_instructor_sets_the_class_recording_policy(world):
    users, classroom = world["users"], world["classroom"]
    url = f"/classes/{classroom.pk}/recording-settings/"
    assert client_for(users["ben"]).post(url, {"auto_record": "on", "retention_days": "7"}).status_code == 403
    assert client_for(users["olga"]).post(url, {"auto_record": "on"}).status_code == 404  # not her class
    assert client_for(users["ada"]).post(url, {"retention_days": "-3"}).status_code == 400
    assert client_for(users["ada"]).post(url, {"retention_days": "99999"}).status_code == 400
    assert client_for(users["ada"]).post(url, {"auto_record": "on", "retention_days": "7"}).status_code == 302
    classroom.refresh_from_db()
    assert classroom.auto_record and classroom.recording_retention_days == 7
    client_for(users["ada"]).post(url, {"retention_days": ""})
    classroom.refresh_from_db()
    assert not classroom.auto_record and classroom.recording_retention_days is None


def test_review_page_gets_fresh_player_links(world):
    users, recording = world["users"], world["recording"]
    data = client_for(users["ada"]).get(f"/recordings/{recording.pk}/review.json").json()
    assert data["program"]["start_ms"] == 0 and data["tracks"][0]["start_ms"] == 1000
    assert [e["offset_ms"] for e in data["events"]] == [2000, 3500]
    assert Client().get(data["program"]["url"]).status_code == 200
    assert client_for(users["olga"]).get(f"/recordings/{recording.pk}/review.json").status_code == 404
