"""r2t_pyg: R²T for torch-geometric graph MIL models that take a ``Data`` / ``Batch``.

Recognised: a module with a ``MessagePassing`` layer, or whose forward's first argument is
named ``data`` / ``batch`` / ``graph`` or annotated with a torch_geometric data class. The
graph is recognised at call time, whatever the argument is called: a ``Data`` / ``Batch``
first has its ``x`` (nodes of every bag), ``batch`` (bag of each node; one bag when
absent) and ``pos`` (patch coordinates, optional) feed the stage, which runs per bag on a
padded view and gives the nodes back in their order; anything else is handled as the
generic wrapper handles a bag tensor. Placement ``"after_projection"`` (the model's first
``Linear → activation`` block, a direct child) or ``"input"`` (``x``).
"""
from __future__ import annotations

import copy
import re
import sys
from typing import Any

import torch
from torch import Tensor, nn

from r2t_plugin.hookspecs import StageFactory, hookimpl
from r2t_plugin.wrap import AdapterError, R2TWrapper, TensorModelWrapper, find_projection, forward_parameters, resolve_placement

__all__ = ["PygWrapper", "is_pyg_model", "r2t_adapt"]

_GRAPH_ARG_NAMES = ("data", "batch", "graph")


def is_pyg_model(model: Any) -> bool:
    """A module with a MessagePassing layer, or whose forward takes a Data / Batch first."""
    if not isinstance(model, nn.Module) or "torch_geometric" not in sys.modules:
        return False
    tg_nn = sys.modules.get("torch_geometric.nn")  # a model with PyG layers has imported it
    if tg_nn is not None and any(isinstance(m, tg_nn.MessagePassing) for m in model.modules()):
        return True
    params = list(forward_parameters(model).values())
    if not params:
        return False
    first = params[0]
    ann = first.annotation if isinstance(first.annotation, str) else getattr(first.annotation, "__name__", "")
    return first.name in _GRAPH_ARG_NAMES or re.search(r"\b(Data|Batch|BaseData)\b", str(ann)) is not None


def _is_graph(value: Any) -> bool:
    data = sys.modules.get("torch_geometric.data")
    return data is not None and isinstance(value, data.data.BaseData)


def _width(model: nn.Module) -> int | None:
    for m in model.modules():
        w = getattr(m, "in_features", None) or getattr(m, "in_channels", None)
        if isinstance(w, int) and w > 0:
            return w
    return None


class PygWrapper(TensorModelWrapper):
    """``forward(data, *args, **kwargs)`` as the model; R²T on ``data.x`` per bag when
    ``data`` is a torch_geometric ``Data`` / ``Batch``, else as :class:`TensorModelWrapper`."""

    def forward(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_graph(data):
            return super().forward(data, *args, **kwargs)
        x = getattr(data, "x", None)
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise AdapterError(f"{type(self.inner).__name__} wrapped for torch_geometric expects a Data/Batch "
                               "with node features x (num_nodes, D)")
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        ctx = {"batch": batch, "pos": getattr(data, "pos", None)}
        if self.placement == "input":
            data = copy.copy(data)
            data.x = self.reembed(x, **ctx)
            return self.inner(data, *args, **kwargs)
        with self.stage_context(**ctx):
            return self.inner(data, *args, **kwargs)

    def reembed(self, h: Tensor, batch: Tensor | None = None, pos: Tensor | None = None, **tensor_ctx: Any) -> Tensor:
        """Nodes (num_nodes, C) → padded bags → stage → nodes again (a bag tensor: as the
        generic wrapper)."""
        from torch_geometric.utils import to_dense_batch

        if batch is None:  # the tensor path (no graph in this call)
            return super().reembed(h, **tensor_ctx)
        self._check_wrapped()
        if h.dim() != 2 or batch is None or h.shape[0] != batch.shape[0]:
            raise AdapterError(f"node features at {self.hook_path or 'the input'} have shape {tuple(h.shape)}, "
                               f"expected ({0 if batch is None else batch.shape[0]}, C)")
        dense, mask = to_dense_batch(h, batch)
        coords = to_dense_batch(pos, batch)[0] if pos is not None else None
        return self.stage(dense, mask=mask, coords=coords)[mask]


@hookimpl
def r2t_adapt(model: Any, stage_factory: StageFactory, placement: str | None) -> nn.Module | None:
    """torch-geometric graph MIL models (a Data / Batch first)."""
    if isinstance(model, R2TWrapper) or not is_pyg_model(model):
        return None
    placement, path, width = resolve_placement(model, find_projection(model), placement, _width)
    return PygWrapper(model, stage_factory(width, width), placement, path)
