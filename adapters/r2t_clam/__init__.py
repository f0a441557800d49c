"""r2t_clam: R²T for models with CLAM's interface (CLAM_SB / CLAM_MB and look-alikes).

Recognised by interface, not class name: ``forward(h, label=None, instance_eval=False,
return_features=False, attention_only=False)`` and an ``attention_net`` ``nn.Sequential``
whose first block (``Linear → activation → Dropout``) is the instance projection. The
wrapper keeps that signature, adds ``coords=`` / ``patch_size=`` for the stage, and returns
the model's own outputs ``(logits, Y_prob, Y_hat, A_raw, results_dict)``.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from r2t_plugin.hookspecs import StageFactory, hookimpl
from r2t_plugin.wrap import AdapterError, TensorModelWrapper, find_projection, forward_parameters, resolve_placement

__all__ = ["ClamWrapper", "is_clam_like", "r2t_adapt"]

CLAM_ARGS = ("h", "label", "instance_eval", "return_features", "attention_only")


def is_clam_like(model: Any) -> bool:
    """True for a module with CLAM's forward arguments and an ``attention_net`` Sequential."""
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "attention_net", None), nn.Sequential):
        return False
    names = tuple(forward_parameters(model))[: len(CLAM_ARGS)]
    return names == CLAM_ARGS


class ClamWrapper(TensorModelWrapper):
    """A CLAM-style model with a re-embedding stage; same call and outputs as the model."""

    def forward(self, h: Tensor, label: Any = None, instance_eval: bool = False,
                return_features: bool = False, attention_only: bool = False, *,
                coords: Tensor | None = None, patch_size: Any = None) -> Any:
        return super().forward(h, label=label, instance_eval=instance_eval, return_features=return_features,
                               attention_only=attention_only, coords=coords, patch_size=patch_size)


def _input_width(model: nn.Module) -> int:
    return int(model.attention_net[0].in_features)


@hookimpl
def r2t_adapt(model: Any, stage_factory: StageFactory, placement: str | None) -> nn.Module | None:
    """CLAM-style models; the stage goes after ``attention_net``'s projection by default."""
    if not is_clam_like(model):
        return None
    found = find_projection(model.attention_net, "attention_net")
    if found is None:
        raise AdapterError(f"{type(model).__name__} has CLAM's interface but attention_net does not start "
                           "with Linear → activation (the instance projection)")
    placement, path, width = resolve_placement(model, found, placement, _input_width)
    return ClamWrapper(model, stage_factory(width, width), placement, path)
