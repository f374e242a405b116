"""The exporters' errors: few, named, and each message says what was wrong and what was expected."""
from engine.errors import EngineError


class ExportError(EngineError):
    """A graph could not be exported, or an exported bundle fails its checks."""


class BackendError(EngineError, ValueError):
    """A backend was named that does not exist, cannot run this configuration, or does not match the model."""
