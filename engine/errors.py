"""The engine's errors: few, named, and each message says what was wrong and what was expected."""


class EngineError(Exception):
    """Base class of every error the engine raises on bad input."""


class ConfigError(EngineError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class CheckpointError(EngineError):
    """A checkpoint cannot be loaded: missing, extra or misshapen tensors, or an unreadable file."""


class AudioError(EngineError, ValueError):
    """Audio that cannot be used: unreadable file, unsupported rate or sample format, wrong shape."""


class ImageError(EngineError, ValueError):
    """An image that cannot be used: unreadable, too large, wrong shape."""


class DataError(EngineError):
    """A dataset or a data tool (such as espeak-ng) is missing or malformed."""


class RenderError(EngineError):
    """An offline render cannot go on: the disk is full, or its work folder holds a render of other inputs.
    What is already rendered is kept; the message says how to continue."""


class VideoError(EngineError, ValueError):
    """A video that cannot be used: unreadable, no video stream, no frames."""
