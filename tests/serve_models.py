"""Models that fail, for the serve tests: importable by the server process (``tests.serve_models``
is on its path, as the tests run from the repository), so joblib can load them there.

They are scikit-learn estimators in every other respect (fitted on a DataFrame: feature names,
classes), so the model loader derives their contract as for any classifier.
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from batch_infer.errors import ModelError

SECRET_VARIABLE = "SERVE_TEST_PLANTED_SECRET"


class _Classifier(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):  # noqa: N803 (scikit-learn's names)
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.unique(y)
        return self

    def _proba(self, X) -> np.ndarray:  # noqa: N803
        values = np.asarray(X, dtype=np.float64)
        positive = 1 / (1 + np.exp(-np.tanh(values.sum(axis=1) / 1000)))
        return np.column_stack([1 - positive, positive])

    def predict(self, X):  # noqa: N803
        return self.classes_.take(np.argmax(self.predict_proba(X), axis=1))


class AlwaysFails(_Classifier):
    """Its predict_proba always raises, with a message that echoes a credential (as a storage
    library may): the planted secret, from the server's environment."""

    def predict_proba(self, X):  # noqa: N803
        secret = os.environ.get(SECRET_VARIABLE, "")
        raise RuntimeError(f"feature store refused token {secret}")


class FailsOnAge99(_Classifier):
    """Scores like a classifier, except that a batch with age 99 makes the model fail as a whole
    (our ModelError, as the scoring core raises it for a model that fails)."""

    def predict_proba(self, X):  # noqa: N803
        ages = np.asarray(X, dtype=np.float64)[:, 0]
        if (ages == 99).any():
            raise ModelError("the model's backend crashed", "restart it")
        return self._proba(X)


class AlwaysRefuses(_Classifier):
    """Raises ValueError, scikit-learn's "not these values", on any rows: the scoring core calls
    that a failing model once every row of a batch of two or more is refused."""

    def predict_proba(self, X):  # noqa: N803
        raise ValueError("X has feature names, but this model was fitted without them")
