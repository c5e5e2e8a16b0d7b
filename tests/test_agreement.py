"""A final model against its teacher beyond top-1: agreement, per-class recall and F1, and the
chi-squared test of the two confusion matrices."""

import numpy as np
import pytest

from host.agreement import agreement


def test_a_model_that_predicts_what_the_teacher_does_agrees_fully():
    labels = np.array([0, 0, 1, 1, 2, 2])
    teacher = np.array([0, 0, 1, 2, 2, 2])
    found = agreement(labels, teacher, teacher.copy(), 3)
    assert found.teacher_agreement == 1.0 and found.chi2 == 0.0 and found.chi2_p_value == 1.0
    assert found.recall == found.teacher_recall == (1.0, 0.5, 1.0)
    assert found.f1 == found.teacher_f1 and found.macro_f1 == pytest.approx((1 + 2 / 3 + 0.8) / 3)


def test_errors_that_move_to_one_class_show_in_recall_and_the_chi_squared_test():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 100)
    teacher = labels.copy()
    teacher[rng.choice(400, 20, replace=False)] = 0  # a few scattered errors
    model = teacher.copy()
    model[labels == 3] = 2  # class 3 is lost entirely
    found = agreement(labels, teacher, model, 4)
    assert found.teacher_agreement == pytest.approx(np.mean(model == teacher))
    assert found.recall[3] == 0.0 and found.teacher_recall[3] > 0.9 and found.f1[3] == 0.0
    assert found.chi2_p_value < 1e-6 and found.chi2_dof > 0
    # A small, scattered change is not significant.
    close = teacher.copy()
    close[[5, 150]] = [1, 2]
    assert agreement(labels, teacher, close, 4).chi2_p_value > 0.5


def test_predictions_that_do_not_line_up_are_refused():
    with pytest.raises(ValueError, match="one class per input from each: 3 labels, 3 teacher and 2 model"):
        agreement(np.array([0, 1, 2]), np.array([0, 1, 2]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="0 labels"):
        agreement(np.array([]), np.array([]), np.array([]), 3)
