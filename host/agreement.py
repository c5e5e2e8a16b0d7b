"""How a compressed model agrees with its teacher on the test split, beyond top-1: the share of
inputs where it predicts the teacher's class, per-class recall and F1 beside the teacher's, and a
chi-squared test of whether its confusion matrix differs from the teacher's.

Both models' classes come from the device's runtime (what is deployed), on the same inputs.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import confusion_matrix, f1_score, recall_score

from host.runs import Agreement


def agreement(labels: np.ndarray, teacher: np.ndarray, model: np.ndarray, num_classes: int) -> Agreement:
    """`model`'s predicted classes against `teacher`'s and the true `labels` (one per input).

    The chi-squared test compares the two confusion matrices as two samples over the same
    (true, predicted) cells, cells empty in both dropped; identical matrices give p = 1. With few
    inputs per cell its p-value is rough: it says "the errors moved", not by how much."""
    if not (len(labels) == len(teacher) == len(model)) or len(labels) == 0:
        raise ValueError(
            f"agreement needs one class per input from each: {len(labels)} labels, {len(teacher)} teacher "
            f"and {len(model)} model predictions"
        )
    classes = list(range(num_classes))
    ct = confusion_matrix(labels, teacher, labels=classes).ravel()
    cm = confusion_matrix(labels, model, labels=classes).ravel()
    used = (ct + cm) > 0
    table = np.stack([ct[used], cm[used]])
    if (table[0] == table[1]).all():
        chi2, p, dof = 0.0, 1.0, int(used.sum()) - 1
    else:
        result = stats.chi2_contingency(table, correction=False)
        chi2, p, dof = float(result.statistic), float(result.pvalue), int(result.dof)

    def per_class(score, predicted: np.ndarray) -> tuple[float, ...]:
        return tuple(float(v) for v in score(labels, predicted, labels=classes, average=None, zero_division=0.0))

    return Agreement(
        float((model == teacher).mean()),
        per_class(recall_score, model),
        per_class(f1_score, model),
        per_class(recall_score, teacher),
        per_class(f1_score, teacher),
        chi2,
        p,
        dof,
    )
