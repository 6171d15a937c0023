"""The detectors' heads on pooled features (logistic regression, with cross-task negatives), and
the TF-IDF baseline each card compares against."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from service import evaluation as ev

from .datasets import Example
from .recipe import C_REG, CROSS_TASK_NEGATIVES, DETECTORS
from .splits import Split


def cross_task_pick(name: str, pool_size: int) -> np.ndarray:
    """Which of the other detectors' training rows (in DETECTORS order) become this detector's
    cross-task negatives: a deterministic sample, the same for a refit head and for training."""
    count = min(CROSS_TASK_NEGATIVES.get(name, 0), pool_size)
    return np.random.default_rng(0).choice(pool_size, size=count, replace=False) if count else np.zeros(0, int)


def training_rows(name: str, splits: dict[str, Split]) -> list[Example]:
    """A detector's training rows plus its cross-task negatives (quant-aware training, whose heads
    are exported without a refit)."""
    pool = [e for other in DETECTORS if other != name for e in splits[other].train]
    return splits[name].train + [replace(pool[int(i)], label=0) for i in cross_task_pick(name, len(pool))]


def with_cross_task_negatives(name: str, x: np.ndarray, y: np.ndarray,
                              others: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Add the cross-task negatives' training features to a head's refit."""
    pool = np.concatenate(list(others.values()))
    pick = cross_task_pick(name, len(pool))
    return np.concatenate([x, pool[pick]]), np.concatenate([y, np.zeros(len(pick), dtype=y.dtype)])


def fit_head(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Standardized logistic regression (balanced classes), folded into raw-feature weights and bias."""
    from sklearn.linear_model import LogisticRegression

    mu, sigma = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=C_REG, class_weight="balanced", max_iter=5000).fit((x - mu) / sigma, y)
    w = clf.coef_[0] / sigma
    return w.astype(np.float32), float(clf.intercept_[0] - np.dot(mu, w))


def tfidf_baseline(split: Split, subset: Callable[[Example], bool] | None = None) -> float | None:
    """TF-IDF (1-2 grams) + logistic regression trained on the training rows; ROC AUC on validation
    (or on the validation rows `subset` selects)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    def text(e: Example) -> str:
        return f"{e.prompt} [SEP] {e.response}"

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    xt = vec.fit_transform([text(e) for e in split.train])
    clf = LogisticRegression(C=4.0, class_weight="balanced", max_iter=5000).fit(xt, [e.label for e in split.train])
    rows = [e for e in split.val if subset is None or subset(e)]
    scores = clf.decision_function(vec.transform([text(e) for e in rows]))
    return ev.roc_auc(scores, np.array([e.label for e in rows]))
