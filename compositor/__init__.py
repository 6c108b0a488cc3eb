"""The MCU compositor: pure media (no Django). Joins a class as a hidden subscriber, lays the stage
out, mixes audio, encodes H.264/AAC and pushes RTMP. Configured by frozen dataclasses built by the
classroom app's services."""


class CompositorError(Exception):
    """Base for everything the compositor refuses or fails at."""
