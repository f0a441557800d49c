"""Graph MIL in the style of Patch-GCN (Chen et al., MICCAI 2021), with torch-geometric layers.

The graph comes from the patch coordinates (plain torch, :mod:`r2t_plugin.geometry`): the
8-neighbour patch grid (``graph="grid"``) or the ``k`` nearest patches (``graph="knn"``).
Residual GENConv layers (softmax aggregation), the concatenation of every layer's output,
then gated attention pooling and a linear head. Bags of a batch form one block-diagonal
graph of their real instances, so a bag gives the same output alone and in a batch.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..geometry import grid_edges, knn_edges
from ..nn import Aggregator, GatedAttentionPool, projection

__all__ = ["PatchGCN"]


class PatchGCN(Aggregator):
    """Projection → ``n_layers`` residual GENConv layers → concat → MLP → gated attention.

    Needs ``coords`` (B, N, 2); ``patch_size`` (B,) is inferred when absent.
    ``instance_scores``: attention weights (B, N); output adds ``embedding`` (B, dim).

    Args:
        in_dim: width D of the instance features (B, N, D).
        n_out: number of outputs; ``logits`` (B, n_out).
        dim: width of the projection, the graph layers and the attention network.
        n_layers: residual GENConv layers.
        graph: ``"grid"`` (8-neighbour patch grid) or ``"knn"``.
        k: neighbours per patch for ``graph="knn"``.
        act: activation of the projection.
        dropout: dropout after the projection and the MLP.
    """

    def __init__(self, in_dim: int, n_out: int, dim: int = 128, n_layers: int = 3,
                 graph: Literal["grid", "knn"] = "grid", k: int = 8, act: str = "relu",
                 dropout: float = 0.25) -> None:
        super().__init__(in_dim, n_out)
        from torch_geometric.nn import DeepGCNLayer, GENConv

        if graph not in ("grid", "knn"):
            raise ValueError(f"graph must be 'grid' or 'knn', got {graph!r}")
        self.graph, self.k = graph, k
        self.proj = projection(in_dim, dim, act, dropout)
        self.layers = nn.ModuleList(
            DeepGCNLayer(GENConv(dim, dim, aggr="softmax", t=1.0, learn_t=True, num_layers=2, norm="layer"),
                         nn.LayerNorm(dim), nn.ReLU(), block="res", dropout=0.1)
            for _ in range(n_layers)
        )
        self.phi = nn.Sequential(nn.Linear(dim * (n_layers + 1), dim), nn.ReLU(), nn.Dropout(dropout))
        self.pool = GatedAttentionPool(dim, dim)
        self.classifier = nn.Linear(dim, n_out)

    def edges(self, coords: Tensor, patch_size: float | None) -> Tensor:
        """(2, E) edges of one bag from its (n, 2) coordinates."""
        if self.graph == "knn":
            return knn_edges(coords, self.k)
        return grid_edges(coords, patch_size)

    def aggregate(self, x: Tensor, mask: Tensor, *, coords: Tensor | None = None,
                  patch_size: Tensor | None = None, **_) -> dict[str, Tensor]:
        if coords is None:
            raise ValueError("patch_gcn builds its graph from patch coordinates: pass coords (B, N, 2)")
        h = self.proj(x)
        nodes = h[mask]  # real instances of every bag, bag after bag
        counts = mask.sum(dim=1).tolist()
        edges, start = [], 0
        for b, n in enumerate(counts):
            ps = None if patch_size is None else float(patch_size[b])
            edges.append(self.edges(coords[b][mask[b]], ps).to(h.device) + start)
            start += n
        edge_index = torch.cat(edges, dim=1)
        outs = [nodes]
        for layer in self.layers:
            outs.append(layer(outs[-1], edge_index))
        z = self.phi(torch.cat(outs, dim=1))
        dense = z.new_zeros(*mask.shape, z.shape[-1])
        dense[mask] = z
        pooled, weights = self.pool(dense, mask)
        return {"logits": self.classifier(pooled[:, 0]), "instance_scores": weights[:, 0],
                "embedding": pooled[:, 0]}
