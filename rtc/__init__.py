"""Pure WebRTC plumbing shared by the SFU, the compositor and the recorder (no Django): the guarded
seams into the pinned aiortc (encoded-frame tap, RTCP taps, socket buffers), keyframe detection, and
the stage client egress jobs join a class with, as a hidden subscriber."""


class RtcError(Exception):
    """Base for everything this package refuses or fails at."""
