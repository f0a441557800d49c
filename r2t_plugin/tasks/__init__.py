"""Prediction tasks: classification and survival (targets, losses, metrics)."""
from __future__ import annotations

from .base import TIE_RTOL, Task, stack_logits, tie_ranks
from .classification import ClassificationTask, classification_metrics
from .survival import SurvivalTargets, SurvivalTask, c_index, hazard_nll, risk_from_logits

__all__ = ["Task", "ClassificationTask", "SurvivalTask", "SurvivalTargets", "classification_metrics",
           "c_index", "hazard_nll", "risk_from_logits", "stack_logits", "task_for_cohort", "tie_ranks",
           "TIE_RTOL"]


def task_for_cohort(cohort, n_bins: int = 4) -> Task:
    """The task matching a :class:`~r2t_plugin.data.Cohort`: classification over its
    classes, or survival with ``n_bins`` bins (fit it on the training bags)."""
    if cohort.kind == "classification":
        return ClassificationTask(len(cohort.classes))
    return SurvivalTask(n_bins)
