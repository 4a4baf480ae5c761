"""`batch-infer serve`: the models `run` scores, answering requests online with the same outputs.

REST (``rest``) and gRPC (``grpc``) only translate the Open Inference Protocol (and the seed
apps' simple endpoints) to and from the data plane (``dataplane``), in the types of
``protocol``; the data plane decodes a request into the Arrow batch `run` would have read
(``codecs``), gathers concurrent requests into one model call (``batching``), optionally answers
repeated rows from a cache (``cache``) and scores with the same core as `run`
(``batch_infer.scoring.score_batch``).

The names below are imported on first use: ``batch-infer --help`` imports ``serve.command``,
which must not pull in pyarrow, FastAPI or gRPC.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DataPlane",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "Predictions",
    "RequestedOutput",
    "ServeError",
]


def __getattr__(name: str) -> Any:
    if name == "DataPlane":
        from .dataplane import DataPlane

        return DataPlane
    if name in __all__:
        from . import protocol

        return getattr(protocol, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
