"""Typed engine errors; service.py maps them to gRPC status codes in one place."""


class EngineError(Exception):
    """Base class of errors the engine raises on purpose."""


class InvalidStepError(EngineError):
    """The step as a whole is malformed (gRPC INVALID_ARGUMENT)."""


class NotWarmedUpError(EngineError):
    """Prefill/Decode before Warmup allocated the KV cache (gRPC FAILED_PRECONDITION)."""


class UnsupportedModelError(EngineError):
    """The checkpoint's architecture or configuration cannot be served."""


class InsufficientMemoryError(EngineError):
    """Warmup found too little memory for the KV cache the limits need (RESOURCE_EXHAUSTED)."""


class CollectiveError(EngineError):
    """A tensor-parallel collective failed or timed out (a rank died or fell out of step).

    Fatal: the ranks no longer agree on which collective comes next, so the shard exits and the
    launcher reports it (gRPC INTERNAL for the call that hit it).
    """
