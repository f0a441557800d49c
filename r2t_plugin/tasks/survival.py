"""Discrete-time survival: hazards over time bins, censored negative log-likelihood.

The model's ``n_bins`` logits are hazards ``h_k = sigmoid(z_k)``: the probability of the
event in bin k given survival to its start. ``S_k = prod_{j<=k} (1 - h_j)`` is the
probability of surviving past bin k. A case with time in bin y contributes
``-log S_{y-1} - log h_y`` if its event was observed and ``-log S_y`` if censored
(``S_{-1} = 1``). Bin edges are the quantiles of the UNCENSORED TRAINING times
(:meth:`SurvivalTask.fit`); the first bin starts at 0, the last is open-ended.
Risk = ``-sum_k S_k`` (higher = earlier expected event).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw, integrated_brier_score
from sksurv.util import Surv
from torch import Tensor

from ..bag import BagBatch, FeatureBag
from .base import stack_logits, tie_ranks

__all__ = ["SurvivalTargets", "SurvivalTask", "c_index", "hazard_nll", "risk_from_logits",
           "survival_from_logits"]


@dataclass(frozen=True)
class SurvivalTargets:
    """(B,) float times and (B,) long events (1 = event observed, 0 = censored)."""

    time: Tensor
    event: Tensor


def survival_from_logits(logits: Tensor) -> Tensor:
    """(B, K) ``S_k``: probability of surviving past bin k."""
    return torch.exp(torch.cumsum(F.logsigmoid(-logits.float()), dim=1))


def risk_from_logits(logits: Tensor) -> Tensor:
    """(B,) risk ``-sum_k S_k``."""
    return -survival_from_logits(logits).sum(dim=1)


def hazard_nll(logits: Tensor, bins: Tensor, event: Tensor) -> Tensor:
    """Mean censored negative log-likelihood of discrete hazards (see the module docstring).

    ``logits`` (B, K); ``bins`` (B,) long bin index of each time; ``event`` (B,) 1/0.
    """
    z = logits.float()
    log_surv = torch.cumsum(F.logsigmoid(-z), dim=1)  # log S_k
    log_surv_before = torch.cat([torch.zeros_like(log_surv[:, :1]), log_surv[:, :-1]], dim=1)
    y = bins.to(z.device).long().unsqueeze(1)
    observed = -(log_surv_before.gather(1, y) + F.logsigmoid(z).gather(1, y)).squeeze(1)
    censored = -log_surv.gather(1, y).squeeze(1)
    e = event.to(z.device).bool()
    return torch.where(e, observed, censored).mean()


def c_index(time: Sequence[float] | np.ndarray, event: Sequence[int] | np.ndarray,
            risk: Sequence[float] | np.ndarray) -> float:
    """Harrell's concordance index (scikit-survival); NaN when no pair is comparable.

    Risks within a relative :data:`~r2t_plugin.tasks.base.TIE_RTOL` of each other are ties
    (:func:`~r2t_plugin.tasks.base.tie_ranks`): a constant prediction gives 0.5."""
    e = np.asarray(event).astype(bool)
    if not e.any():
        return float("nan")
    try:
        return float(concordance_index_censored(e, np.asarray(time, dtype=float),
                                                tie_ranks(risk).astype(float))[0])
    except (ValueError, ZeroDivisionError):
        return float("nan")


class SurvivalTask:
    """Survival with ``n_bins`` discrete-time hazards; model selection on validation C-index."""

    kind = "survival"
    monitor = "c_index"
    higher_is_better = True

    def __init__(self, n_bins: int = 4) -> None:
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = n_bins
        self.edges: Tensor | None = None  # (n_bins - 1,) inner bin edges
        self._train: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_out(self) -> int:
        return self.n_bins

    def fit(self, train_bags: Sequence[FeatureBag]) -> "SurvivalTask":
        """Bin edges from the quantiles of the uncensored training times."""
        t = self.targets(train_bags)
        observed = t.time[t.event == 1].double()
        if observed.numel() == 0:
            raise ValueError("survival bins need at least one uncensored training case")
        q = torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64)[1:-1]
        self.edges = torch.quantile(observed, q).float()
        self._train = (t.time.numpy().astype(float), t.event.numpy().astype(bool))
        return self

    def _need_fit(self) -> Tensor:
        if self.edges is None:
            raise RuntimeError("SurvivalTask: call fit(train_bags) first (bins come from training times)")
        return self.edges

    def bin_of(self, time: Tensor) -> Tensor:
        """(B,) long bin index of each time (bin k holds edges[k-1] <= t < edges[k])."""
        edges = self._need_fit()
        return torch.bucketize(time.float().cpu(), edges, right=True)

    def targets(self, bags: Sequence[FeatureBag] | BagBatch) -> SurvivalTargets:
        """Times and events; errors name the bag without survival targets."""
        if isinstance(bags, BagBatch):
            if bags.time is None or bags.event is None:
                raise ValueError("batch has no survival targets")
            return SurvivalTargets(bags.time.float().cpu(), bags.event.long().cpu())
        for bag in bags:
            if bag.time is None or bag.event is None or int(bag.event) not in (0, 1) or not bag.time >= 0:
                raise ValueError(f"bag {bag.case_id!r}: invalid survival target time={bag.time} event={bag.event}")
        return SurvivalTargets(torch.tensor([float(b.time) for b in bags]),
                               torch.tensor([int(b.event) for b in bags], dtype=torch.long))

    def loss(self, logits: Tensor, batch_or_targets: BagBatch | SurvivalTargets) -> Tensor:
        """Mean censored NLL (:func:`hazard_nll`)."""
        t = self.targets(batch_or_targets) if isinstance(batch_or_targets, BagBatch) else batch_or_targets
        return hazard_nll(logits, self.bin_of(t.time), t.event)

    def metrics(self, logits_list: Sequence[Tensor] | Tensor, targets: SurvivalTargets) -> dict[str, float]:
        """``c_index`` (Harrell), ``c_index_ipcw`` (Uno, censoring from the training set,
        truncated at the last uncensored training time) and ``ibs`` (integrated Brier score
        over the 10th-80th percentiles of the evaluated times); NaN where not computable.
        Both concordances rank tie-aware risks (:func:`~r2t_plugin.tasks.base.tie_ranks`)."""
        self._need_fit()
        logits = stack_logits(logits_list)
        time = targets.time.numpy().astype(float)
        event = targets.event.numpy().astype(bool)
        risk = risk_from_logits(logits).numpy()
        out = {"c_index": c_index(time, event, risk), "c_index_ipcw": float("nan"), "ibs": float("nan")}
        train_t, train_e = self._train
        y_train, y_test = Surv.from_arrays(train_e, train_t), Surv.from_arrays(event, time)
        try:
            tau = float(train_t[train_e].max())
            out["c_index_ipcw"] = float(concordance_index_ipcw(y_train, y_test, tie_ranks(risk).astype(float),
                                                                 tau=tau)[0])
        except (ValueError, ZeroDivisionError):
            pass
        grid = np.unique(np.percentile(time, np.linspace(10, 80, 15)))
        grid = grid[(grid > time.min()) & (grid < min(time.max(), train_t.max()))]
        if len(grid) >= 2:
            surv = survival_from_logits(logits)
            cols = self.bin_of(torch.as_tensor(grid, dtype=torch.float32))
            try:
                out["ibs"] = float(integrated_brier_score(y_train, y_test, surv[:, cols].numpy(), grid))
            except (ValueError, ZeroDivisionError):
                pass
        return out

    def __repr__(self) -> str:
        return f"SurvivalTask(n_bins={self.n_bins})"
