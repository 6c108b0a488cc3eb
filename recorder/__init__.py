"""The recorder: pure media (no Django). Per-track recordings of the stage, the program recording,
and the manifest that keeps them in sync."""


class RecorderError(Exception):
    """Base for everything the recorder refuses or fails at."""
