"""The stage SFU (no Django): one `Room` per live session of aiortc peer connections, forwarding each
publisher's encoded frames to every subscriber without decoding, relaying keyframe requests and
bitrate feedback. The classroom app's media node (classroom/media_node/node.py) adapts it to the
channel layer; what it measures leaves through a `RoomObserver`."""


class SfuError(Exception):
    """Base for media node refusals; `code` reaches the browser as the error event's code."""

    code = "media_error"
