"""The demo's world: three real models on scikit-learn's bundled data sets, and the drift story.

Shared by the example model server (which trains the models) and the traffic generator (which plays
the users and the ground truth). Phases, in order:

- ``healthy``: rows like the training data, true labels.
- ``covariate_drift``: a few features shift by two standard deviations; the concept is unchanged.
- ``concept_drift``: inputs look normal again, but the world changed: the same inputs now have other
  outcomes (binary: labels flip in one region of the input space; multiclass: two classes swap;
  regression: targets rise by 40%). Accuracy falls.
- ``recovery``: the world stays changed and a new model version, trained on recent data, is deployed.

The binary model's patients also carry an age group, an attribute the model does not use: the groups are
treated alike until the concept drift, which hits the region where most of the older patients' cases now
lie. The model is then wrong far more often for the older group (accuracy about 0.25 against 0.8) and
finds fewer of its cancers (true positive rate about 0.13 against 0.38); the retrained version brings both
groups' accuracy back to about 0.9.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.model_selection import train_test_split

PHASES = ("healthy", "covariate_drift", "concept_drift", "recovery")
AGE_GROUPS = ("under_60", "60_plus")  # the binary model's attribute (examples/demo/mlmon.yml: fairness)
DRIFTED_FEATURES = 3  # the first three features drift in the covariate-drift phase


@dataclass
class World:
    name: str
    task: str
    features: list[str]
    classes: list[str]
    X_train: np.ndarray
    y_train: np.ndarray
    X_pool: np.ndarray  # rows the traffic draws from (never seen in training)
    y_pool: np.ndarray
    scale: np.ndarray  # per-feature standard deviation, for drift and jitter

    @property
    def drifted(self) -> list[str]:
        return self.features[:DRIFTED_FEATURES]


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")


def load(name: str, seed: int = 0) -> World:
    if name == "cancer":
        data, task = load_breast_cancer(), "binary"
        classes = ["malignant", "benign"]
    elif name == "wine":
        data, task = load_wine(), "multiclass"
        classes = [f"cultivar_{i}" for i in range(3)]
    elif name == "diabetes":
        data, task = load_diabetes(), "regression"
        classes = []
    else:
        raise ValueError(f"unknown demo model {name!r}")
    X, y = data.data, data.target
    if classes:
        y = np.asarray(classes)[y]
    Xtr, Xpool, ytr, ypool = train_test_split(X, y, test_size=0.4, random_state=seed)
    return World(name, task, [_clean(f) for f in data.feature_names], classes, Xtr, ytr, Xpool, ypool, X.std(axis=0))


MODELS = ("cancer", "wine", "diabetes")


def estimator(world: World, seed: int = 0):
    if world.task == "regression":
        return RandomForestRegressor(n_estimators=60, min_samples_leaf=3, random_state=seed, n_jobs=1)
    return RandomForestClassifier(n_estimators=60, random_state=seed, n_jobs=1)


def sample(world: World, phase: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows as the users send them in ``phase``, with their true outcomes."""
    idx = rng.integers(0, len(world.X_pool), size=n)
    X = world.X_pool[idx] + rng.normal(0, 0.05, size=(n, world.X_pool.shape[1])) * world.scale
    y = world.y_pool[idx].copy()
    if phase == "covariate_drift":
        X[:, :DRIFTED_FEATURES] += 2.0 * world.scale[:DRIFTED_FEATURES]
    if phase in ("concept_drift", "recovery"):
        y = changed_concept(world, X, y)
    return X, y


def changed_concept(world: World, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The outcomes after the concept drift, for inputs ``X`` whose old outcomes were ``y``."""
    if world.task == "regression":
        return y * 1.4
    y = y.copy()
    if world.task == "binary":
        # In one region (the larger half of the first feature) the outcome flips.
        region = _changed_region(world, X)
        flipped = np.where(y == world.classes[0], world.classes[1], world.classes[0])
        return np.where(region, flipped, y)
    a, b = world.classes[1], world.classes[2]
    return np.where(y == a, b, np.where(y == b, a, y))


def _changed_region(world: World, X: np.ndarray) -> np.ndarray:
    return X[:, 0] > np.median(world.X_train[:, 0])


def age_groups(world: World, phase: str, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The age group of each of the binary model's rows ``X``: 40% are 60 or over, at random until the concept
    drift; from then on 70% of the rows in the changed region and 10% of the others (still 40% in all)."""
    if phase in ("concept_drift", "recovery"):
        older = np.where(_changed_region(world, X), 0.7, 0.1)
    else:
        older = np.full(len(X), 0.4)
    return np.where(rng.uniform(size=len(X)) < older, AGE_GROUPS[1], AGE_GROUPS[0])


def validation_set(world: World, copies: int = 10, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The held-out rows as a model team would profile them for drift: repeated with the same small jitter
    the users' requests carry, so that the reference is as large as the windows it is compared with."""
    rng = np.random.default_rng(seed)
    X = np.repeat(world.X_pool, copies, axis=0)
    X = X + rng.normal(0, 0.05, size=X.shape) * world.scale
    return X, np.repeat(world.y_pool, copies)


def retraining_set(world: World, rng: np.random.Generator, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Recent labelled data after the concept drift: what a team would retrain the model on."""
    idx = rng.integers(0, len(world.X_train), size=n)
    X = world.X_train[idx] + rng.normal(0, 0.05, size=(n, world.X_train.shape[1])) * world.scale
    return X, changed_concept(world, X, world.y_train[idx])
