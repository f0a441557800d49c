"""The R²T re-embedding stage (Tang et al., CVPR 2024; README, "The R²T stage")."""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..nn import make_activation
from . import lean
from .attention import CHUNK_TOKENS, STREAM_CHUNK_TOKENS, RegionAttention
from .cross_region import CrossRegionAttention
from .regions import Chunk, Regions, coords_regions, official_regions, sequence_regions

__all__ = ["R2T"]


def _require(cond: Tensor, message: str, confirm: Callable[[], Tensor] | None = None) -> None:
    """Raise ValueError(message) unless ``cond`` (and, when given, unless ``confirm()``, a
    slower exact test); on an accelerator, an asynchronous device assertion of ``cond``
    instead, so that checking never waits for the device."""
    if cond.device.type == "cpu":
        if not bool(cond) and (confirm is None or not bool(confirm())):
            raise ValueError(message)
    else:
        torch._assert_async(cond, message)

Mode = Literal["default", "official"]
Layout = Literal["sequence", "coords"]


def _residual(branch: Tensor, x: Tensor) -> Tensor:
    """``branch + x``, in place into the branch's fresh output (which nothing saves) when
    that keeps the residual stream's dtype (under autocast the branch may be narrower) and
    the output is no view (module backward hooks wrap outputs in views)."""
    if branch.dtype == x.dtype and not branch._is_view():
        return branch.add_(x)
    return x + branch


class _PreNorm(nn.Module):
    """``LN`` then an attention module: the residual branch of one encoder layer."""

    def __init__(self, dim: int, attn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = attn

    def forward(self, x: Tensor, regions: Regions, **kw) -> Tensor:
        return self.attn(x, regions, norm=self.norm, **kw)  # the LN applied inside, LN(x) never stored


class R2T(nn.Module):
    """Re-embedded Regional Transformer (Tang et al., CVPR 2024): re-embeds a bag of
    instance features with ``n_layers - 1`` R-MSA layers (regional attention with EPEG) and
    one CR-MSA layer (attention across regions); the README's "The R²T stage" lists the
    options with their defaults.

    ``mode="default"`` masks padding (a bag gives the same output alone and in a padded
    batch), runs CR-MSA per bag, uses one region setting for both layers, gives small bags
    fewer, larger regions and can take regions from patch coordinates. ``mode="official"``
    (use :meth:`official`) computes exactly what the authors' code computes, for their
    checkpoints: no masking, the file-order grid with zero padding, CR-MSA on a fixed
    8 x 8 partition and across the bags of a batch. Token-wise work runs on the batch's
    real instances only, never on padding.

    Args:
        in_dim: width D of the input features; None: no input projection (the stage runs
            at width ``dim`` on features already projected, e.g. by an aggregator).
        dim: working width C of the encoder.
        out_dim: output width (a final Linear when it differs from ``dim``); default ``dim``.
        n_layers: encoder layers (the last is CR-MSA when ``crmsa``).
        heads: heads of R-MSA (``dim`` must divide by it).
        region_num: the paper's fixed L x L region count; replaced by ``region_size``.
        region_size: a fixed S x S window (the number of regions grows with N).
        min_region_tokens: default mode: the least tokens per region for small bags.
        layout: ``"sequence"`` (file-order grid) or ``"coords"`` (windows over the patch grid).
        epeg, epeg_k: the embedded position encoding and its odd kernel size.
        crmsa, crmsa_k, crmsa_heads, crmsa_mlp: cross-region attention, its K
            representatives per region, its heads and Φ as an MLP.
        all_shortcut: add the encoder's input to its output.
        act, input_dropout: activation and dropout of the input projection.
        dropout: dropout of the attention outputs.
        mode: ``"default"`` or ``"official"``.
        chunk_tokens: region slots attended at a time (bounds the attention's temporaries
            in the forward and backward pass; results do not depend on it).

    Shapes:
        - **input:** ``x`` (B, N, D) or (N, D); ``mask`` (B, N) bool, True = real instance;
          ``coords`` (B, N, 2) or (N, 2) level-0 pixels; ``patch_size`` a float or (B,).
        - **output:** (B, N, ``out_dim``) or (N, ``out_dim``); padded positions are zero.
    """

    def __init__(
        self,
        in_dim: int | None = None,
        dim: int = 512,
        out_dim: int | None = None,
        *,
        n_layers: int = 2,
        heads: int = 8,
        region_num: int | None = 8,
        region_size: int | None = None,
        min_region_tokens: int = 16,
        layout: Layout = "sequence",
        epeg: bool = True,
        epeg_k: int = 15,
        crmsa: bool = True,
        crmsa_k: int = 3,
        crmsa_heads: int = 8,
        crmsa_mlp: bool = False,
        all_shortcut: bool = False,
        act: str = "relu",
        input_dropout: float = 0.25,
        dropout: float = 0.1,
        mode: Mode = "default",
        chunk_tokens: int = CHUNK_TOKENS,
    ) -> None:
        super().__init__()
        if mode not in ("default", "official"):
            raise ValueError(f"mode must be 'default' or 'official', got {mode!r}")
        if layout not in ("sequence", "coords"):
            raise ValueError(f"layout must be 'sequence' or 'coords', got {layout!r}")
        if mode == "official" and (layout != "sequence" or region_size is not None or region_num is None):
            raise ValueError("official mode is the reference: layout='sequence' with region_num, no region_size")
        if region_size is not None:
            region_num = None  # a fixed region size replaces the paper's fixed region count
        if region_num is None and region_size is None:
            raise ValueError("give region_num (fixed count) or region_size (fixed window side)")
        if (region_size or region_num) < 1:
            raise ValueError(f"region_num / region_size must be >= 1, got {region_num} / {region_size}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if epeg and epeg_k % 2 == 0:
            raise ValueError(f"epeg_k must be odd (an even kernel changes the number of rows), got {epeg_k}")
        self.in_dim, self.dim, self.out_dim = in_dim, dim, out_dim or dim
        self.mode, self.layout = mode, layout
        self.region_num, self.region_size = region_num, region_size
        self.min_region_tokens = 0 if mode == "official" else min_region_tokens
        self.all_shortcut = all_shortcut
        if in_dim is not None:
            self.proj = nn.Sequential(nn.Linear(in_dim, dim), make_activation(act), nn.Dropout(input_dropout))
        else:
            self.proj = None
        n_rmsa = n_layers - 1 if crmsa else n_layers
        self.layers = nn.ModuleList(
            _PreNorm(dim, RegionAttention(dim, heads, epeg, epeg_k, dropout, chunk_tokens)) for _ in range(n_rmsa)
        )
        self.crmsa = _PreNorm(dim, CrossRegionAttention(dim, crmsa_k, crmsa_heads, crmsa_mlp, dropout,
                                                          chunk_tokens)) if crmsa else None
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim) if out_dim not in (None, dim) else None
        self.reset_parameters()

    @classmethod
    def official(cls, in_dim: int | None = 1024, dim: int = 512, **options) -> "R2T":
        """The reference implementation's behaviour, exactly (for its checkpoints)."""
        options.pop("min_region_tokens", None)
        return cls(in_dim, dim, mode="official", **options)

    def reset_parameters(self) -> None:
        """The reference implementation's init: xavier-normal weights, zero biases, Φ uniform ±1/sqrt(K)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.crmsa is not None and isinstance(self.crmsa.attn.phi, nn.Parameter):
            bound = 1.0 / math.sqrt(self.crmsa.attn.k)
            nn.init.uniform_(self.crmsa.attn.phi, -bound, bound)

    # ------------------------------------------------------------------ regions
    def partition(self, mask: Tensor, coords: Tensor | None, patch_size: Tensor | None,
                  bag_names: list[str] | None = None, lengths: list[int] | None = None) -> Regions:
        """The default-mode partition of a padded batch (one for both layers).

        ``lengths``: instances per bag when known on the host (spares a device transfer).
        """
        kw = dict(region_num=self.region_num, region_size=self.region_size,
                  min_region_tokens=self.min_region_tokens)
        if self.layout == "coords":
            if coords is None:
                raise ValueError("layout='coords' needs coords (B, N, 2) in level-0 pixels")
            return coords_regions(mask, coords, patch_size, bag_names=bag_names, **kw)
        return sequence_regions(mask, lengths=lengths, **kw)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, mask: Tensor | None = None, coords: Tensor | None = None,
                patch_size: float | Tensor | None = None) -> Tensor:
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(0)
            mask = None if mask is None else mask.unsqueeze(0)
            coords = None if coords is None else coords.unsqueeze(0)
        self._check(x, mask, coords)
        b, n, _ = x.shape
        if patch_size is not None and not isinstance(patch_size, Tensor):
            patch_size = torch.full((b,), float(patch_size), device=x.device)
        if self.mode == "official":
            regions = official_regions(b, n, self.region_num, x.device)
            # the reference's CR-MSA always uses 8 x 8 regions
            cr = regions if self.region_num == 8 else official_regions(b, n, 8, x.device)
            if b > 1 and self.crmsa is not None:
                warnings.warn(
                    "R2T official mode with a batch of several bags reproduces the reference: "
                    "CR-MSA mixes regions of different bags. Use batch size 1 or the default mode.",
                    stacklevel=2,
                )
        else:
            lengths = None
            if mask is None:
                mask, lengths = torch.ones(b, n, dtype=torch.bool, device=x.device), [n] * b
            regions = cr = self.partition(mask, coords, patch_size, lengths=lengths)
        flat = x.reshape(b * n, x.shape[-1])
        per_bag = self.mode != "official"
        if not (self.training or torch.is_grad_enabled()) and lean.no_hooks(*self.modules()):
            h = self._stream(flat, regions, cr, per_bag)
        else:
            if regions.tokens is not None:
                flat = flat.index_select(0, regions.tokens)
            h = lean.projection(self.proj, flat) if self.proj is not None else flat
            h = self._encode(h, regions, cr, per_bag)
        if regions.tokens is None:
            out = h.reshape(b, n, h.shape[-1])
        else:
            out = h.new_zeros(b * n, h.shape[-1]).index_copy(0, regions.tokens, h).reshape(b, n, -1)
        return out[0] if single else out

    def _encode(self, x: Tensor, rmsa: Regions, cr: Regions | None, per_bag: bool) -> Tensor:
        """(T, C) tokens through the encoder layers.

        With gradients (and no module hooks, which must see every layer run), everything
        after the last R-MSA attention is recomputed in the backward from that attention's
        output and the residual stream (both stored anyway): the later residual streams
        and the final LayerNorm's input are never stored."""
        shortcut = x
        recompute = torch.is_grad_enabled() and len(self.layers) > 0 and lean.no_hooks(*self.modules())
        for layer in self.layers[:-1] if recompute else self.layers:
            x = _residual(layer(x, rmsa), x)
        if recompute:
            last = self.layers[-1]
            o = last.attn.attend(x, rmsa, norm=last.norm)
            return checkpoint(self._tail, o, x, shortcut, cr, per_bag, use_reentrant=False)
        return self._finish(x, shortcut, cr, per_bag)

    def _stream(self, flat: Tensor, rmsa: Regions, cr: Regions, per_bag: bool) -> Tensor:
        """Inference (eval, no gradients, no hooks): :meth:`_encode`'s values (to rounding) on
        ONE (T, C) buffer, which every layer updates in place, chunk by chunk of regions.

        The input projection runs block by block (a padded batch's input is never gathered
        whole). With one R-MSA layer whose regions CR-MSA shares (the usual stage), CR-MSA
        takes its representatives inside the R-MSA pass, so that pass can already add the
        encoder's input for ``all_shortcut`` (``x + s`` with ``x = s + RMSA``); otherwise
        the projection runs again at the end for it. The final LayerNorm runs in place."""
        t, tokens, step = rmsa.n_tokens, rmsa.tokens, STREAM_CHUNK_TOKENS

        def block(i: int) -> Tensor:
            rows = flat[i : i + step] if tokens is None else flat.index_select(0, tokens[i : i + step])
            return lean.projection(self.proj, rows) if self.proj is not None else rows

        first = block(0)
        h = first.new_empty(t, first.shape[1])  # a copy even without projection: x is never written
        for i in range(0, t, step):
            h[i : i + step] = first if i == 0 else block(i)
        del first
        layers = list(self.layers)
        last = layers.pop() if layers else None
        for layer in layers:
            layer.attn.add_into(h, rmsa, norm=layer.norm)
        crmsa = None if self.crmsa is None else self.crmsa.attn
        shares = crmsa is not None and last is not None and cr is rmsa  # representatives taken in the R-MSA pass
        twice = self.all_shortcut and last is not None and not layers and (crmsa is None or shares)
        g, reps = lean.Packer(cr.slots.numel()), lean.Packer(cr.n_regions)

        def visit(ch: Chunk, rows: Tensor) -> None:
            g_ch, reps_ch = crmsa.chunk_summary(rows, ch, self.crmsa.norm)
            g.add(g_ch)
            reps.add(reps_ch)

        if last is not None:
            last.attn.add_into(h, rmsa, norm=last.norm, visit=visit if shares else None, twice=twice)
        if shares:
            crmsa.add_mixed(h, g.buffer, reps.buffer, cr, per_bag)
        elif crmsa is not None:
            crmsa.add_into(h, cr, per_bag=per_bag, norm=self.crmsa.norm)
        out = h if self.head is None else None
        for i in range(0, t, step):
            rows = h[i : i + step]
            if self.all_shortcut and not twice:
                rows += block(i)
            z = self.norm(rows)
            if self.head is None:
                rows.copy_(z)
                continue
            z = self.head(z)
            if out is None:
                out = z.new_empty(t, z.shape[1])
            out[i : i + step] = z
        return out

    def _tail(self, o: Tensor, x: Tensor, shortcut: Tensor, cr: Regions | None, per_bag: bool) -> Tensor:
        return self._finish(_residual(self.layers[-1].attn.output(o), x), shortcut, cr, per_bag)

    def _finish(self, x: Tensor, shortcut: Tensor, cr: Regions | None, per_bag: bool) -> Tensor:
        if self.crmsa is not None:
            x = _residual(self.crmsa(x, cr, per_bag=per_bag), x)
        if self.all_shortcut:
            x = _residual(x, shortcut)
        x = self.norm(x)
        return self.head(x) if self.head is not None else x

    def _check(self, x: Tensor, mask: Tensor | None, coords: Tensor | None) -> None:
        """Input checks; on an accelerator the data-dependent ones never wait for the device."""
        if x.dim() != 3:
            raise ValueError(f"R2T expects features (B, N, D) or (N, D), got shape {tuple(x.shape)}")
        want = self.in_dim if self.in_dim is not None else self.dim
        if x.shape[-1] != want:
            raise ValueError(f"R2T expects feature width {want}, got {x.shape[-1]}"
                             + (" (in_dim)" if self.in_dim is not None else " (dim; no input projection)"))
        if x.shape[1] == 0:
            raise ValueError("R2T got an empty bag (0 instances)")
        if not x.is_floating_point():
            raise ValueError(f"R2T expects floating-point features, got {x.dtype}")
        if mask is not None:
            if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
                raise ValueError(f"mask must be bool {tuple(x.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
            if self.mode == "official":
                _require(mask.all(), "R2T official mode takes no padding mask (the reference has none); "
                                     "run bags one at a time or use the default mode")
            _require(mask.any(dim=1).all(), "a bag in the batch has no real instance (mask all False)")
        if coords is not None and coords.shape[:2] != x.shape[:2]:
            raise ValueError(f"coords must be {tuple(x.shape[:2]) + (2,)}, got {tuple(coords.shape)}")
        # one reduction instead of an elementwise test: a NaN or Inf anywhere makes the sum
        # non-finite (the elementwise test then rules out an overflow of huge finite values)
        _require(torch.isfinite(x.sum(dtype=torch.float32)), "R2T got NaN or Inf features",
                 confirm=lambda: torch.isfinite(x).all())

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, layout={self.layout}, in_dim={self.in_dim}, dim={self.dim}, "
                f"region_num={self.region_num}, region_size={self.region_size}")
