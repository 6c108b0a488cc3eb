"""The stage call on impaired links, beside a direct Chromium-to-Chromium call through the same impairment.

Run from the project root, as root (network namespaces, /dev/net/tun), with nothing else to start:

    .venv/bin/python bench/network.py [--seconds 60] [--conditions clean,cap300,loss5]

Topology (see bench/README.md, "network"): a lab namespace joined to the host by the userspace netem of
tests/netlab.py; the teacher's Chromium on the host (unimpaired), the student's Chromium inside the
namespace (its link impaired). classcast: an embedded-default stack (daphne + media node) on 0.0.0.0,
reached at http://<TUN host address>:<port>; ada starts the class and brings ben on stage through the
pages. The peer: the same two Chromiums on bench/p2p/index.html, a plain RTCPeerConnection call, signaled
through bench/p2p/relay.py on the host's TUN address. Both feed the same noisy clip as camera.

Each condition: the call is restarted on a clean link (classcast: the student's page reloads and rejoins
the stage; p2p: the callee reloads, the caller starts a fresh connection), both sides decode, then the
condition is applied for --seconds while each receiving page samples getStats() every 300 ms. classcast
runs every condition first, then the peer (only two Chromiums at a time on 2 cores).

The last line printed is `RESULT {json}`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2p.relay import SignalingRelay  # noqa: E402 - bench/ is sys.path[0] when run as a script
from tests.netlab import ImpairedLink, LinkConditions, NetlabError  # noqa: E402
from tests.netlab_stage import (  # noqa: E402
    CLASSCAST_PCS, P2P_PCS, FlowFigures, NetlabStageError, StageServer, bring_on_stage, chromium_args,
    first_time, launch_chromium, login, make_noisy_clip, new_sampled_page, page_samples, running_stage_server,
    summarise_flow, video_back_after,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLEAN = LinkConditions()


class BenchError(RuntimeError):
    pass


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- conditions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """Conditions applied at `at_fraction` of the window plus `plus_s` seconds."""

    at_fraction: float
    up: LinkConditions
    down: LinkConditions
    plus_s: float = 0.0

    def at_s(self, seconds: float) -> float:
        return self.at_fraction * seconds + self.plus_s


@dataclass(frozen=True)
class Condition:
    name: str
    label: str
    up: LinkConditions
    down: LinkConditions
    changes: tuple[Change, ...] = ()
    restore_index: int | None = None  # which change ends an outage (for "video back after")


def both(c: LinkConditions) -> dict[str, LinkConditions]:
    return {"up": c, "down": c}


CAP300 = LinkConditions(rate_kbps=300, queue_ms=200)
CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    Condition("clean", "clean link", CLEAN, CLEAN),
    Condition("cap300", "300 kbit/s cap each way, 200 ms queue", CAP300, CAP300),
    Condition("drop2m", "2 Mbit/s dropping to 300 kbit/s mid-call",
              **both(LinkConditions(rate_kbps=2000, queue_ms=200)), changes=(Change(0.5, CAP300, CAP300),)),
    Condition("drop1m", "1 Mbit/s dropping to 300 kbit/s mid-call",
              **both(LinkConditions(rate_kbps=1000, queue_ms=200)), changes=(Change(0.5, CAP300, CAP300),)),
    Condition("loss5", "5 % loss + 50±20 ms jitter each way",
              **both(LinkConditions(loss=0.05, delay_ms=50, jitter_ms=20))),
    Condition("loss2rtt150", "2 % loss + 75 ms each way (150 ms RTT)",
              **both(LinkConditions(loss=0.02, delay_ms=75))),
    Condition("outage5", "a 5 s outage, then restored", CLEAN, CLEAN,
              changes=(Change(1 / 3, LinkConditions(outage=True), LinkConditions(outage=True)),
                       Change(1 / 3, CLEAN, CLEAN, plus_s=5.0)),
              restore_index=1),
)}


# --- CPU and load -----------------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float, str]]:
    """pid -> (ppid, utime+stime seconds, what it is) for every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rest = data[data.rindex(")") + 2:].split()
        table[int(entry)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK, _kind(cmd))
    return table


def _kind(cmd: str) -> str:
    for needle, kind in (("netem_bridge", "bridge"), ("daphne", "daphne"), ("chrom", "chromium"),
                         ("playwright", "playwright")):
        if needle in cmd:
            return kind
    return "bench"


def tree_cpu_s() -> dict[str, float]:
    """CPU seconds so far of this process and its descendants, by kind (bench, daphne, chromium, bridge...)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in table:
            _, cpu, kind = table[pid]
            out[kind] = out.get(kind, 0.0) + cpu
        todo.extend(children.get(pid, []))
    return out


def host_busy_s() -> float:
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class CpuWindow:
    t: float = field(default_factory=time.monotonic)
    host: float = field(default_factory=host_busy_s)
    tree: dict[str, float] = field(default_factory=tree_cpu_s)

    def cores_since(self, earlier: CpuWindow) -> dict[str, float]:
        """Cores busy over the window: the whole machine, and our process tree by kind."""
        dt = self.t - earlier.t
        out = {"host": (self.host - earlier.host) / dt}
        for kind, cpu in self.tree.items():
            out[kind] = max(0.0, cpu - earlier.tree.get(kind, 0.0)) / dt
        out["load_avg_1m"] = os.getloadavg()[0]
        return out


# --- the two calls ------------------------------------------------------------------------------------------

# A function, not an expression: the class pages' CSP forbids the eval Playwright uses for expressions.
DECODING_JS = """() => { const s = window.__netstats || []; if (s.length < 4) return null;
  const a = s[s.length - 4].video, b = s[s.length - 1].video;
  return a && b && b.frames > a.frames ? b.frames : null; }"""


def wait_decoding(*pages: Any, timeout_s: float) -> None:
    """Until every page's sampler has seen new frames over its last ~1 s."""
    for page in pages:
        page.wait_for_function(DECODING_JS, timeout=timeout_s * 1000, polling=250)


class ClasscastCall:
    """ada (host) and ben (namespace) on stage; restarting reloads ben's page, which rejoins the call."""

    name = "classcast"

    def __init__(self, host_browser: Any, ns_browser: Any, server: StageServer, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        urls = server.demo["urls"]
        self.teacher = login(host_browser, server.url, "ada", server.password, pcs_expr=CLASSCAST_PCS)
        self.student = login(ns_browser, server.url, "ben", server.password, pcs_expr=CLASSCAST_PCS)
        self.teacher.goto(urls["instructor"])
        self.student.goto(urls["student"])
        self.teacher.click("#start-session")
        self.teacher.wait_for_selector("#stage-grid .tile.me")
        bring_on_stage(self.teacher, self.student, timeout_ms=int(timeout_s * 1000))
        wait_decoding(self.teacher, self.student, timeout_s=timeout_s)

    def restart(self) -> None:
        self.student.reload()
        self.student.wait_for_function("() => window.classcast.firstFrameMs !== null", timeout=self.timeout_s * 1000)
        wait_decoding(self.teacher, self.student, timeout_s=self.timeout_s)

    def close(self) -> None:
        for page in (self.student, self.teacher):
            page.context.close()


class P2pCall:
    """The teacher's Chromium calls the student's; restarting reloads the callee (a fresh connection)."""

    name = "p2p"

    def __init__(self, host_browser: Any, ns_browser: Any, relay: SignalingRelay, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.teacher = new_sampled_page(host_browser, None, P2P_PCS)
        self.student = new_sampled_page(ns_browser, None, P2P_PCS)
        self.teacher.goto(f"{relay.url}?role=caller")
        self.student.goto(f"{relay.url}?role=callee")
        wait_decoding(self.teacher, self.student, timeout_s=timeout_s)

    def restart(self) -> None:
        self.student.reload()
        wait_decoding(self.teacher, self.student, timeout_s=self.timeout_s)

    def close(self) -> None:
        for page in (self.student, self.teacher):
            page.context.close()


# --- one measurement ------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    call: str
    condition: str
    student_rx: FlowFigures  # what the student receives (the teacher's media, through the impaired down link)
    teacher_rx: FlowFigures  # the student's media at the teacher (through the impaired up link)
    student_rx_after: FlowFigures | None  # from the first change on (after the drop / the outage)
    teacher_rx_after: FlowFigures | None
    to_360_s: dict[str, float | None]  # first decoded frame -> first frame at >= 360 lines, per receiver
    video_back_s: dict[str, float | None]  # after an outage is restored, per receiver
    link: dict[str, float]  # what the impairment saw, per direction
    cpu: dict[str, float]


def link_figures(before: Any, after: Any, seconds: float) -> dict[str, float]:
    """Offered and delivered kbit/s per direction, and what the bottleneck dropped: toward the student
    this is what the media node (or the peer) sent into the capped link."""
    out = {}
    for direction in ("down", "up"):
        d = getattr(after - before, direction)
        dropped = d.dropped_loss + d.dropped_queue + d.dropped_outage
        out[f"{direction}_offered_kbps"] = d.bytes_in * 8 / 1000 / seconds
        out[f"{direction}_delivered_kbps"] = d.forwarded_bytes * 8 / 1000 / seconds
        out[f"{direction}_offered_packets"] = d.packets_in
        out[f"{direction}_dropped_queue_pct"] = 100 * d.dropped_queue / d.packets_in if d.packets_in else 0.0
        out[f"{direction}_dropped_pct"] = 100 * dropped / d.packets_in if d.packets_in else 0.0
        out[f"{direction}_queue_delay_ms_mean"] = d.queue_delay_ms_mean
    return out


def measure(call: ClasscastCall | P2pCall, link: ImpairedLink, cond: Condition, seconds: float) -> Measurement:
    link.set(up=CLEAN, down=CLEAN)
    restarted = time.time()
    call.restart()
    cpu0, stats0 = CpuWindow(), link.stats()
    link.set(up=cond.up, down=cond.down)
    t0 = time.time()
    times = []
    for change in cond.changes:
        at = t0 + change.at_s(seconds)
        time.sleep(max(0.0, at - time.time()))
        link.set(up=change.up, down=change.down)
        times.append(time.time())
    time.sleep(max(0.0, t0 + seconds - time.time()))
    t1 = time.time()
    cpu1, stats1 = CpuWindow(), link.stats()
    link.set(up=CLEAN, down=CLEAN)
    pages = {"student": page_samples(call.student), "teacher": page_samples(call.teacher)}
    after = times[0] if times else None
    restored = times[cond.restore_index] if cond.restore_index is not None else None

    def to_360(samples: list[dict[str, Any]]) -> float | None:
        first = first_time(samples, after=restarted)
        top = first_time(samples, min_height=360, after=restarted)
        return None if first is None or top is None else top - first

    return Measurement(
        call=call.name,
        condition=cond.name,
        student_rx=summarise_flow(pages["student"], t0, t1),
        teacher_rx=summarise_flow(pages["teacher"], t0, t1),
        student_rx_after=summarise_flow(pages["student"], after, t1) if after else None,
        teacher_rx_after=summarise_flow(pages["teacher"], after, t1) if after else None,
        to_360_s={who: to_360(s) for who, s in pages.items()},
        video_back_s={who: video_back_after(s, restored) if restored else None for who, s in pages.items()},
        link=link_figures(stats0, stats1, t1 - t0),
        cpu=cpu1.cores_since(cpu0),
    )


def run_call(make: Callable[[], ClasscastCall | P2pCall], link: ImpairedLink, conditions: list[Condition],
             seconds: float) -> list[Measurement]:
    call = make()
    try:
        out = []
        for cond in conditions:
            log(f"{call.name}: {cond.label}, {seconds:.0f} s")
            out.append(measure(call, link, cond, seconds))
            m = out[-1]
            log(f"  student rx {m.student_rx.fps:.1f} fps {m.student_rx.height}p {m.student_rx.kbps:.0f} kbit/s;"
                f" teacher rx {m.teacher_rx.fps:.1f} fps {m.teacher_rx.height}p;"
                f" host {m.cpu['host']:.2f} cores, load {m.cpu['load_avg_1m']:.2f}")
        return out
    finally:
        call.close()


# --- the run ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def browsers(pw: Any, link: ImpairedLink, origins: list[str], clip: Path, tmp: Path) -> Iterator[tuple[Any, Any]]:
    args = chromium_args(origins, clip)
    host = launch_chromium(pw, args)
    try:
        ns = launch_chromium(pw, args, link=link, wrapper_dir=tmp)
        try:
            yield host, ns
        finally:
            ns.close()
    finally:
        host.close()


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    conditions = [CONDITIONS[name] for name in args.conditions]
    width, height = (int(v) for v in args.clip_size.split("x"))
    clip = make_noisy_clip(tmp / f"noisy-{width}x{height}.y4m", width=width, height=height)
    raw: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    busy0 = CpuWindow()
    time.sleep(2.0)
    raw["host_busy_before"] = CpuWindow().cores_since(busy0)["host"]  # other work on the machine
    with ImpairedLink() as link:
        log(f"lab namespace {link.netns}: host {link.host_address}, student {link.ns_address}")
        with running_stage_server(tmp / "var", link.host_address) as server, \
                SignalingRelay(link.host_address) as relay, sync_playwright() as pw:
            origins = [server.url, relay.url.rstrip("/")]
            with browsers(pw, link, origins, clip, tmp) as (host, ns):
                timeout_s = args.step_timeout
                try:
                    log("classcast: ada starts the class, ben comes on stage")
                    raw["classcast"] = run_call(lambda: ClasscastCall(host, ns, server, timeout_s=timeout_s),
                                                link, conditions, args.seconds)
                except Exception:
                    print(f"--- daphne log (tail) ---\n{server.log_tail()}", file=sys.stderr)
                    raise
                log("p2p: the same two browsers call each other directly")
                raw["p2p"] = run_call(lambda: P2pCall(host, ns, relay, timeout_s=timeout_s),
                                      link, conditions, args.seconds)
    return raw


# --- the report ---------------------------------------------------------------------------------------------

ROWS: list[tuple[str, str, str]] = [  # (label, FlowFigures attribute, format)
    ("fps", "fps", "{:.1f}"),
    ("longest freeze s", "longest_freeze_s", "{:.1f}"),
    ("frozen s", "frozen_s", "{:.1f}"),
    ("resolution (median)", "resolution", "{}"),
    ("kbit/s received", "kbps", "{:.0f}"),
    ("  of which retransmitted", "rtx_kbps", "{:.0f}"),
    ("audio concealed %", "concealed_pct", "{:.1f}"),
    ("audio FEC packets", "fec_packets", "{:d}"),
    ("video packets lost", "video_lost_packets", "{:d}"),
]


def _value(fig: FlowFigures, attr: str) -> Any:
    return f"{fig.width}x{fig.height}" if attr == "resolution" else getattr(fig, attr)


def _fmt(fmt: str, value: Any) -> str:
    return "-" if value is None else fmt.format(value)


def _sent(fig: FlowFigures) -> str:
    """What the page that received `fig` sent itself: kbit/s (retransmitted) and the encoder's limit."""
    if fig.sent_kbps is None:
        return "-"
    return f"{fig.sent_kbps:.0f} ({fig.sent_rtx_kbps or 0:.0f}) {fig.limit or 'none'}"


def _ratio(ours: Any, peer: Any) -> str:
    if not isinstance(ours, (int, float)) or not isinstance(peer, (int, float)):
        return "-"  # a resolution, or a figure missing on one side
    if peer == 0:
        return "=" if ours == 0 else "inf"
    return f"{ours / peer:.2f}"


def flow_json(fig: FlowFigures | None) -> dict[str, Any] | None:
    if fig is None:
        return None
    d = asdict(fig)
    return {
        "fps": round(d["fps"], 2), "longest_freeze_s": round(d["longest_freeze_s"], 2),
        "frozen_s": round(d["frozen_s"], 2), "freezes": d["freezes"], "resolution": f"{d['width']}x{d['height']}",
        "kbps": round(d["kbps"], 1), "rtx_kbps": round(d["rtx_kbps"], 1), "audio_kbps": round(d["audio_kbps"], 1),
        "concealed_pct": None if d["concealed_pct"] is None else round(d["concealed_pct"], 2),
        "fec_packets": d["fec_packets"], "video_lost_packets": d["video_lost_packets"],
        "browser_freeze_count": d["browser_freeze_count"], "browser_frozen_s": round(d["browser_frozen_s"], 2),
        "sender_sent_kbps": None if d["sent_kbps"] is None else round(d["sent_kbps"], 1),
        "sender_rtx_kbps": None if d["sent_rtx_kbps"] is None else round(d["sent_rtx_kbps"], 1),
        "sender_height": d["sent_height"], "sender_limit": d["limit"],
    }


def ratios_json(ours: FlowFigures, peer: FlowFigures) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("fps", "longest_freeze_s", "frozen_s", "kbps", "concealed_pct"):
        a, b = getattr(ours, key), getattr(peer, key)
        out[key] = round(a / b, 2) if a is not None and b else None
    return out


def print_flow(title: str, ours: FlowFigures, peer: FlowFigures) -> None:
    print(f"  {title}")
    for label, attr, fmt in ROWS:
        a, b = _value(ours, attr), _value(peer, attr)
        print(f"    {label:<26} {_fmt(fmt, a):>11} {_fmt(fmt, b):>11} {_ratio(a, b):>7}")


def report(args: argparse.Namespace, raw: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "seconds": args.seconds, "clip": args.clip_size, "cores": os.cpu_count(),
        "load_avg_1m_before": round(raw["load_before"], 2),
        "host_busy_cores_before": round(raw["host_busy_before"], 2), "conditions": {},
    }
    print(f"\nNetwork: the student's link impaired, {args.seconds:.0f} s windows, figures from the receiving"
          f" browser's getStats() every 300 ms")
    print(f"  (machine: {os.cpu_count()} cores, load {raw['load_before']:.2f} and"
          f" {raw['host_busy_before']:.2f} cores busy before the run)")
    saturated = False
    for ours, peer in zip(raw["classcast"], raw["p2p"]):
        cond = CONDITIONS[ours.condition]
        print(f"\n== {cond.label} ==")
        print(f"    {'':<26} {'classcast':>11} {'p2p':>11} {'ratio':>7}")
        print_flow("what the student receives (teacher's media, down link)", ours.student_rx, peer.student_rx)
        print_flow("the student's media at the teacher (up link)", ours.teacher_rx, peer.teacher_rx)
        if ours.student_rx_after and peer.student_rx_after:
            print("  after the change (from the drop / the outage on)")
            for who, a, b in (("student rx", ours.student_rx_after, peer.student_rx_after),
                              ("teacher rx", ours.teacher_rx_after, peer.teacher_rx_after)):
                assert a is not None and b is not None
                print(f"    {who + ' fps':<26} {a.fps:>11.1f} {b.fps:>11.1f} {_ratio(a.fps, b.fps):>7}")
                print(f"    {who + ' longest freeze s':<26} {a.longest_freeze_s:>11.1f} {b.longest_freeze_s:>11.1f}"
                      f" {_ratio(a.longest_freeze_s, b.longest_freeze_s):>7}")
        if cond.restore_index is not None:
            for who in ("student", "teacher"):
                a, b = ours.video_back_s[who], peer.video_back_s[who]
                print(f"    {who + ' video back s':<26} {_fmt('{:.1f}', a):>11} {_fmt('{:.1f}', b):>11}")
        for who in ("student", "teacher"):
            a, b = ours.to_360_s[who], peer.to_360_s[who]
            print(f"    {who + ' to 640x360 s':<26} {_fmt('{:.1f}', a):>11} {_fmt('{:.1f}', b):>11}")
        print("  link (what entered the impairment)")
        for key, label in (("down_offered_kbps", "kbit/s toward student"), ("down_dropped_pct", "  dropped %"),
                           ("up_offered_kbps", "kbit/s from student"), ("up_dropped_pct", "  dropped %")):
            print(f"    {label:<26} {ours.link[key]:>11.1f} {peer.link[key]:>11.1f}")
        print("  senders (outbound-rtp video: kbit/s sent, of which retransmissions; what limits the encoder)")
        for who, a, b in (("teacher sends", ours.teacher_rx, peer.teacher_rx),
                          ("student sends", ours.student_rx, peer.student_rx)):
            print(f"    {who:<26} {_sent(a):>22} {_sent(b):>22}")
        for m in (ours, peer):
            c = m.cpu
            saturated |= c["host"] > 1.8
            print(f"  cpu ({m.call}): host {c['host']:.2f} of {os.cpu_count()} cores, load {c['load_avg_1m']:.2f};"
                  f" chromium {c.get('chromium', 0):.2f}, daphne {c.get('daphne', 0):.2f},"
                  f" netem bridge {c.get('bridge', 0):.2f}, bench {c.get('bench', 0):.2f}")
        result["conditions"][cond.name] = {
            "label": cond.label,
            **{who: {
                "classcast": flow_json(getattr(ours, who)), "p2p": flow_json(getattr(peer, who)),
                "ratio_vs_p2p": ratios_json(getattr(ours, who), getattr(peer, who)),
            } for who in ("student_rx", "teacher_rx")},
            **({"after_change": {
                "student_rx": {"classcast": flow_json(ours.student_rx_after), "p2p": flow_json(peer.student_rx_after)},
                "teacher_rx": {"classcast": flow_json(ours.teacher_rx_after), "p2p": flow_json(peer.teacher_rx_after)},
            }} if ours.student_rx_after else {}),
            "to_640x360_s": {"classcast": ours.to_360_s, "p2p": peer.to_360_s},
            "video_back_s": {"classcast": ours.video_back_s, "p2p": peer.video_back_s},
            "link": {"classcast": {k: round(v, 2) for k, v in ours.link.items()},
                     "p2p": {k: round(v, 2) for k, v in peer.link.items()}},
            "cpu_cores": {"classcast": {k: round(v, 2) for k, v in ours.cpu.items()},
                          "p2p": {k: round(v, 2) for k, v in peer.cpu.items()}},
        }
    result["saturated"] = saturated
    if saturated:
        print("\nWARNING: the machine was saturated (> 1.8 of 2 cores busy) in at least one window: encoders"
              " and the userspace netem compete for CPU, so part of what is measured is the machine.")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="window per condition and call (default 60)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help=f"comma-separated, from: {', '.join(CONDITIONS)} (default: all)")
    parser.add_argument("--clip-size", default="640x360", help="noisy camera clip, WxH (default 640x360)")
    parser.add_argument("--step-timeout", type=float, default=45.0, help="seconds any one browser step may take")
    parser.add_argument("--timeout", type=float, default=None, help="seconds the whole run may take")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (database, daphne log)")
    args = parser.parse_args(argv)
    args.conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = [c for c in args.conditions if c not in CONDITIONS]
    if unknown:
        parser.error(f"unknown conditions: {unknown}; known: {list(CONDITIONS)}")
    if args.timeout is None:  # two calls per condition, each a restart plus the window
        args.timeout = 240 + 2 * len(args.conditions) * (args.seconds + 3 * args.step_timeout)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        log("needs root and /dev/net/tun (network namespaces, TUN devices)")
        return 2

    def on_alarm(signum: int, frame: Any) -> None:
        raise BenchError(f"the benchmark took longer than --timeout {args.timeout:.0f} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    tmp = Path(tempfile.mkdtemp(prefix="classcast-netbench-"))
    started = time.monotonic()
    try:
        raw = run(args, tmp)
    except (BenchError, NetlabError, NetlabStageError) as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result = report(args, raw)
    result["run_s"] = round(time.monotonic() - started, 1)
    print(f"\nRESULT {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
