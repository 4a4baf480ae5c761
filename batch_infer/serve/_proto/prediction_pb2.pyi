from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class PredictRequest(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, features: _Iterable[float] | None = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("prediction", "probability", "model_version", "probabilities")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    prediction: int
    probability: float
    model_version: str
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(
        self,
        prediction: int | None = ...,
        probability: float | None = ...,
        model_version: str | None = ...,
        probabilities: _Iterable[float] | None = ...,
    ) -> None: ...

class BatchPredictRequest(_message.Message):
    __slots__ = ("instances",)
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[PredictRequest]
    def __init__(self, instances: _Iterable[PredictRequest | _Mapping] | None = ...) -> None: ...

class BatchPredictResponse(_message.Message):
    __slots__ = ("predictions",)
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[PredictResponse]
    def __init__(self, predictions: _Iterable[PredictResponse | _Mapping] | None = ...) -> None: ...

class HealthCheckRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthCheckResponse(_message.Message):
    __slots__ = ("status", "model_loaded")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOADED_FIELD_NUMBER: _ClassVar[int]
    status: str
    model_loaded: bool
    def __init__(self, status: str | None = ..., model_loaded: bool | None = ...) -> None: ...
