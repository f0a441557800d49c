"""The built-in CLAM called the way CLAM's own code calls its models (test fixture).

Same parameters and state_dict as :class:`r2t_plugin.aggregators.CLAM`, but
``forward(h, label=None, instance_eval=False, return_features=False, attention_only=False)
-> (logits, Y_prob, Y_hat, A_raw, results_dict)``: what the r2t_clam adapter recognises.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from r2t_plugin.aggregators import CLAM


class CLAMInterface(CLAM):
    """:class:`CLAM` with CLAM's own calling convention (one bag ``h`` (N, D))."""

    def forward(self, h: Tensor, label: Tensor | int | None = None, instance_eval: bool = False,
                return_features: bool = False, attention_only: bool = False):
        lab = None if label is None or not instance_eval else torch.as_tensor(label).reshape(-1)
        out = super().forward(h, label=lab)
        a_raw = out["attention_raw"][0]
        if attention_only:
            return a_raw
        logits = out["logits"]
        results = {}
        if lab is not None:
            results["instance_loss"] = out["instance_loss"]
        if return_features:
            results["features"] = out["embedding"]
        return logits, F.softmax(logits, dim=1), logits.argmax(dim=1, keepdim=True), a_raw, results
