"""Models: load artifacts, derive what they take (the input contract), plan what they give.

- ``load``: artifacts (pins, trusted types, versions) and :class:`LoadedModel`.
- ``contract``: what each feature must be, derived from the fitted model or a saved contract.
- ``inputs``: Arrow batch -> what the model was fitted on (matrix or typed DataFrame).
- ``outputs``: methods -> named, typed columns.
"""

from .contract import Contract, FeatureSpec
from .load import (
    SKOPS_TRUSTED,
    Artifact,
    LoadedModel,
    contract_path,
    load_artifact,
    load_model,
)
from .outputs import METHODS, OutputPlan

__all__ = [
    "METHODS",
    "SKOPS_TRUSTED",
    "Artifact",
    "Contract",
    "FeatureSpec",
    "LoadedModel",
    "OutputPlan",
    "contract_path",
    "load_artifact",
    "load_model",
]
