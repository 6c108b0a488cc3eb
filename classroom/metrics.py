"""Prometheus metrics. Counters/histograms live in the process that observes them; database-backed
gauges are read at scrape time by `DatabaseCollector`, so every web process reports the same truth."""
from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)
_RATIO_BUCKETS = (0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)
_BITRATE_BUCKETS = (5e4, 1e5, 2.5e5, 5e5, 1e6, 1.5e6, 2.5e6, 4e6, 8e6)

PEER_CONNECTIONS = Gauge(
    "classcast_peer_connections", "Peer connections held by this media node, by state", ["state"]
)
CALL_SETUPS = Counter("classcast_call_setups_total", "Peer connection set-ups, by result", ["result"])
JOIN_SECONDS = Histogram(
    "classcast_join_seconds",
    "Join time: server = join request to connected; browser = asking for the call to first remote frame",
    ["source"],
    buckets=_LATENCY_BUCKETS,
)
RTT_SECONDS = Histogram("classcast_rtt_seconds", "Round-trip time per peer", ["source"], buckets=_LATENCY_BUCKETS)
JITTER_SECONDS = Histogram(
    "classcast_jitter_seconds", "Inbound jitter per track", ["source", "kind"], buckets=_LATENCY_BUCKETS
)
PACKET_LOSS = Histogram(
    "classcast_packet_loss_ratio", "Inbound packet loss per track and report interval", ["source", "kind"],
    buckets=_RATIO_BUCKETS,
)
BITRATE_BPS = Histogram(
    "classcast_bitrate_bps", "Bitrate per track", ["source", "direction", "kind"], buckets=_BITRATE_BUCKETS
)
# Each stage participant's two legs from the media node's own view (sfu/quality.py): up = what the node
# receives from them, down = what their browser reports receiving from the node. One series per live
# participant, removed when they leave: bounded by the people on stage, whatever runs for how long.
PARTICIPANT_LOSS = Gauge(
    "classcast_participant_loss_ratio", "Packet loss per participant and leg", ["session", "participant", "direction"]
)
PARTICIPANT_JITTER = Gauge(
    "classcast_participant_jitter_seconds", "Jitter per participant and leg", ["session", "participant", "direction"]
)
PARTICIPANT_RTT = Gauge("classcast_participant_rtt_seconds", "Round-trip time node-participant", ["session", "participant"])
PARTICIPANT_BITRATE = Gauge(
    "classcast_participant_bitrate_bps", "Bitrate per participant and leg", ["session", "participant", "direction"]
)
LEG_LOSS = Histogram(
    "classcast_leg_loss_ratio", "Packet loss per participant leg and collection, on this node", ["direction"],
    buckets=_RATIO_BUCKETS,
)
NODE_BITRATE_BPS = Gauge("classcast_media_node_bitrate_bps", "Total media bitrate of this node", ["direction"])
# Bounded: one series per stage member and what they receive, removed when either leaves.
STAGE_LAYER = Gauge(
    "classcast_stage_layer_height", "Nominal height of the video layer a subscriber gets of a publisher",
    ["session_id", "subscriber", "publisher"],
)
INBOUND_FPS = Histogram(
    "classcast_inbound_fps", "Frames per second received from each publisher", buckets=(1, 5, 10, 15, 20, 25, 30, 60)
)
SIGNALING_MESSAGES = Counter("classcast_signaling_messages_total", "Signaling messages by type", ["type"])
SIGNALING_ERRORS = Counter("classcast_signaling_errors_total", "Refused signaling messages by code", ["code"])
SOCKETS_REFUSED = Counter("classcast_sockets_refused_total", "WebSockets refused at connect, by reason", ["reason"])
INGEST_PUBLISHERS = Gauge("classcast_ingest_publishers", "RTMP publishers connected to this packager")
INGEST_REFUSED = Counter("classcast_ingest_refused_total", "RTMP publishers refused, by reason", ["reason"])
INGEST_SEGMENTS = Counter("classcast_hls_segments_total", "HLS segments written")
INGEST_SEGMENT_SECONDS = Histogram(
    "classcast_hls_segment_seconds", "HLS segment durations", buckets=(0.5, 1, 1.5, 1.8, 2, 2.2, 2.5, 3, 4, 6)
)
HLS_REQUESTS = Counter("classcast_hls_requests_total", "HLS files served by the app, by kind and result", ["kind", "result"])
ACTIONS_DENIED = Counter("classcast_actions_denied_total", "Actions refused for lack of permission", ["action"])


class DatabaseCollector:
    """Live sessions, stage members and connected participants, read from the database at scrape."""

    def collect(self):
        from .models import Presence, SessionStatus, StageMembership, LiveSession

        live = GaugeMetricFamily("classcast_live_sessions", "Sessions that are live now")
        live.add_metric([], LiveSession.objects.filter(status=SessionStatus.LIVE).count())
        yield live
        stage = GaugeMetricFamily("classcast_stage_members", "Members on stage in live sessions")
        stage.add_metric([], StageMembership.objects.filter(state="on_stage", session__status="live").count())
        yield stage
        sockets = GaugeMetricFamily("classcast_connected_sockets", "Open class sockets by page", labels=["page"])
        for page in ("console", "class", "watch", "service"):
            sockets.add_metric([page], Presence.objects.filter(page=page).count())
        yield sockets
        from .services.viewers import viewers_by_class

        viewers = GaugeMetricFamily("classcast_hls_viewers", "HLS viewers seen in the last window, by class", labels=["class_id"])
        for classroom_id, count in viewers_by_class().items():
            viewers.add_metric([str(classroom_id)], count)
        yield viewers
        broadcasts = GaugeMetricFamily("classcast_broadcasts", "Broadcast jobs by status", labels=["status"])
        from .models import ACTIVE_BROADCAST_STATES, Broadcast

        for status in ACTIVE_BROADCAST_STATES:
            broadcasts.add_metric([status], Broadcast.objects.filter(status=status).count())
        yield broadcasts
        from .models import Recording, RecordingStatus

        recordings = GaugeMetricFamily("classcast_recordings", "Recordings by status (incomplete: with a gap or a failure)",
                                       labels=["status", "incomplete"])
        for status in RecordingStatus.values:
            for incomplete in (False, True):
                rows = Recording.objects.filter(status=status)
                rows = rows.exclude(problems=[]) if incomplete else rows.filter(problems=[])
                recordings.add_metric([status, str(incomplete).lower()], rows.count())
        yield recordings


_registered = False


def database_collector_register() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(DatabaseCollector())
        _registered = True
