"""Broadcast destinations may not point inside our network (SSRF from the compositor worker): refused
when added and again right before the worker connects, with real DNS for literal addresses, localhost
and the names in /etc/hosts (no outside hosts resolve here, so public names are not tested), unless the
operator's allow-list names them; our own ingest is always allowed."""
from __future__ import annotations

import socket
import time

import pytest

from classroom.egress import _destinations_apply
from classroom.errors import InvalidState
from classroom.models import Destination as DestinationRow
from classroom.services.broadcast import INSIDE_OUR_NETWORK, destination_add, destination_url_check
from compositor.config import Destination, ProgramConfig
from compositor.program import Program
from tests.test_broadcast_services import cls  # noqa: F401 - the fixture: a live demo class

pytestmark = [pytest.mark.once, pytest.mark.usefixtures("fast_passwords")]  # the same in every mode
INGEST = "rtmp://127.0.0.1:19350/live"


@pytest.fixture(autouse=True)
def policy(settings):
    """No allow-list; our ingest on a port of its own (the default, 127.0.0.1:1935, would be allowed)."""
    settings.CLASSCAST_DESTINATION_ALLOWED_HOSTS = []
    settings.CLASSCAST_RTMP_INGEST_URL = INGEST


def etc_hosts_loopback_name() -> str:
    """A name other than localhost that /etc/hosts maps to a loopback address (the resolver path)."""
    with open("/etc/hosts") as hosts:
        for line in hosts:
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 2 and fields[0].startswith("127."):
                for name in fields[1:]:
                    if name != "localhost" and "." not in name:
                        return name
    pytest.skip("no loopback name besides localhost in /etc/hosts")


INTERNAL = [
    "rtmp://127.0.0.1/live/k",
    "rtmp://127.0.0.1:1936/live/k",
    "rtmp://127.1/live/k",  # short and numeric forms the resolver turns into 127.0.0.1
    "rtmp://2130706433/live/k",
    "rtmp://0x7f000001/live/k",
    "rtmp://10.0.0.5:1935/live/k",
    "rtmp://172.16.3.4/live/k",
    "rtmp://192.168.1.1/live/k",
    "rtmp://169.254.169.254/latest/meta-data",
    "rtmp://100.64.0.1/live/k",  # carrier-grade NAT: not public
    "rtmp://0.0.0.0/live/k",
    "rtmp://224.0.0.1/live/k",
    "rtmp://240.0.0.1/live/k",
    "rtmp://[::1]/live/k",
    "rtmp://[::]/live/k",
    "rtmp://[fe80::1]/live/k",
    "rtmp://[fd00::1]/live/k",
    "rtmp://[::ffff:127.0.0.1]/live/k",
    "rtmp://[::ffff:10.1.2.3]/live/k",
    "rtmp://[64:ff9b::a9fe:a9fe]/live/k",  # NAT64 of 169.254.169.254
    "rtmp://[2002:7f00:1::]/live/k",  # 6to4 of 127.0.0.1
    "rtmps://localhost/live/k",
    "rtmp://LOCALHOST./live/k",
    "rtmp://user:pw@localhost:1935/live/k",
]


@pytest.mark.parametrize("url", INTERNAL)
def test_destinations_inside_our_network_are_refused_with_a_clear_message(url):
    with pytest.raises(InvalidState) as refused:
        destination_url_check(url)
    assert str(refused.value) == INSIDE_OUR_NETWORK
    assert "inside our network" in INSIDE_OUR_NETWORK and "YouTube" in INSIDE_OUR_NETWORK


def test_a_name_that_resolves_inside_is_refused():
    name = etc_hosts_loopback_name()
    assert socket.gethostbyname(name).startswith("127.")
    with pytest.raises(InvalidState, match="inside our network"):
        destination_url_check(f"rtmp://{name}:1935/live/key")


@pytest.mark.parametrize("url", ["rtmp://1.1.1.1/live2/k", "rtmps://[2606:4700:4700::1111]:443/app/k", "rtmp://a.example/live2/k"])
def test_public_addresses_and_names_not_known_yet_are_accepted(url):
    assert destination_url_check(f"  {url} ") == url  # unknown names are checked again at connect time


def test_the_operator_allow_list_names_hosts_addresses_and_networks(settings):
    name = etc_hosts_loopback_name()
    settings.CLASSCAST_DESTINATION_ALLOWED_HOSTS = [name, "[::1]", "10.0.0.0/8", "192.168.7.7"]
    for url in (f"rtmp://{name}:1936/live/k", "rtmp://[::1]/live/k", "rtmp://10.20.30.40/live/k", "rtmp://192.168.7.7/x/y"):
        assert destination_url_check(url) == url
    for url in ("rtmp://localhost:1936/live/k", "rtmp://127.0.0.1/live/k", "rtmp://192.168.7.8/x/y", "rtmp://172.16.0.1/x/y"):
        with pytest.raises(InvalidState, match="inside our network"):  # same address, other name; other networks
            destination_url_check(url)


def test_our_own_ingest_is_always_allowed():
    assert destination_url_check("rtmp://127.0.0.1:19350/live/another-class-key")
    with pytest.raises(InvalidState):  # the ingest's host, not all of it
        destination_url_check("rtmp://127.0.0.1:19351/live/k")


def test_destination_add_refuses_and_keeps_nothing(cls, settings):  # noqa: F811
    with pytest.raises(InvalidState, match="inside our network"):
        destination_add(classroom_id=cls.id, actor=cls.actor("ada"), name="metadata", url="rtmp://169.254.169.254/x/y")
    assert not DestinationRow.objects.filter(classroom_id=cls.id).exists()
    settings.CLASSCAST_DESTINATION_ALLOWED_HOSTS = ["127.0.0.1"]
    added = destination_add(classroom_id=cls.id, actor=cls.actor("ada"), name="lab", url="rtmp://127.0.0.1:1936/live/k")
    assert added.url == "rtmp://127.0.0.1:1936/live/k"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_the_worker_checks_again_right_before_it_connects(settings, tmp_path):
    """Added while allowed (the name resolved outside then, or the operator allowed it); by the time the
    worker connects it is not: the destination fails as the user's error, without retries, and the
    broadcast and its other destinations go on."""
    port = free_port()  # nothing listens: an allowed destination gets as far as "connection refused"
    settings.CLASSCAST_DESTINATION_ALLOWED_HOSTS = ["127.0.0.1"]
    url = f"rtmp://127.0.0.1:{port}/live2/secret-stream-key"
    assert destination_url_check(url) == url
    settings.CLASSCAST_DESTINATION_ALLOWED_HOSTS = []
    program = Program(ProgramConfig(width=320, height=180, fps=10, keyint_s=1.0),
                      destinations=[Destination(id="file", url=str(tmp_path / "program.mkv"))])
    program.start()
    try:
        # as the job applies the heartbeat's destinations
        current = _destinations_apply(program, set(), [{"id": "dest-1", "url": url}])
        assert current == {"dest-1"}
        assert wait_for(lambda: program.stats()["destinations"]["dest-1"]["state"] == "failed", 10)
        dest = program.stats()["destinations"]["dest-1"]
        assert dest["user_error"] is True and dest["reconnects"] == 0
        assert dest["error"] == f"rtmp://127.0.0.1:{port}/live2/***: {INSIDE_OUR_NETWORK}"
        assert wait_for(lambda: program.stats()["destinations"]["file"]["bytes_out"] > 0, 10)
        assert program.stats()["running"] is True and program.stats()["destinations"]["file"]["state"] == "live"

        # Allowed by the operator: the check passes and the sink gets as far as the (closed) port.
        settings.CLASSCAST_DESTINATION_ALLOWED_HOSTS = ["127.0.0.1"]
        _destinations_apply(program, current, [{"id": "dest-2", "url": url}])
        assert wait_for(lambda: program.stats()["destinations"]["dest-2"]["reconnects"] >= 1, 10)
        assert "refused" in program.stats()["destinations"]["dest-2"]["error"]
    finally:
        program.stop()
