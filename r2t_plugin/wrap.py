"""``with_r2t()``: put a re-embedding stage into a model you already have.

The adapters (plugins implementing ``r2t_adapt``) recognise a model and return a wrapper;
this module holds the machinery they share and the generic fallback adapter (a builtin
plugin, asked last) for modules whose first argument is a (N, D) or (B, N, D) tensor or a
:class:`~r2t_plugin.bag.BagBatch`, which covers every built-in aggregator.

Placements: ``"after_projection"`` runs the stage on the output of the model's first
``Linear → activation`` on instances (a forward hook on that block, active only while the
wrapper runs, so the inner model is not modified); ``"input"`` runs it on the model's
input, at the input width. ``residual=True`` (the default) makes the stage ``x + Z(stage(x))``
with ``Z`` a zero-initialised linear map, so the wrapped model computes exactly what the
original did until training moves ``Z``; ``residual=False`` is the paper's replacing stage.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, Callable, Iterator

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .bag import BagBatch
from .hookspecs import StageFactory, hookimpl

__all__ = [
    "with_r2t", "R2TWrapper", "TensorModelWrapper", "ResidualStage", "AdapterError",
    "find_projection", "input_width", "forward_parameters", "takes_label", "resolve_placement",
    "build_tensor_wrapper", "PLACEMENTS", "RESIDUAL_DEFAULT", "recorded_options", "stage_parameters",
]

PLACEMENTS = ("after_projection", "input")
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.PReLU, nn.Mish)


RESIDUAL_DEFAULT = True  # with_r2t's residual; stored specs written before it lack the key (False)


def recorded_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``with_r2t`` options with ``residual`` made explicit (its default filled in), so that a
    stored copy keeps its meaning if the default changes."""
    return {"residual": RESIDUAL_DEFAULT, **options}


def stage_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model``'s re-embedding stages: those under a submodule named
    ``stage`` (a wrapper's ``.stage``, R²T-MIL's ``.stage``), the residual gate included."""
    return [p for name, p in model.named_parameters() if "stage" in name.split(".")[:-1]]


class AdapterError(TypeError):
    """No adapter recognises the model, or the chosen placement does not fit it."""


class ResidualStage(nn.Module):
    """``x + gate(body(x))`` with ``gate`` a zero-initialised ``Linear(dim, dim)``."""

    def __init__(self, body: nn.Module, dim: int) -> None:
        super().__init__()
        self.body = body
        self.gate = nn.Linear(dim, dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, x: Tensor, mask: Tensor | None = None, coords: Tensor | None = None,
                patch_size: Any = None) -> Tensor:
        return x + self.gate(self.body(x, mask=mask, coords=coords, patch_size=patch_size))


def with_r2t(model: nn.Module, *, stage: str = "r2t", placement: str | None = None,
             residual: bool = RESIDUAL_DEFAULT, **stage_options: Any) -> nn.Module:
    """``model`` with a re-embedding stage (R²T by default) applied to its instance features.

    The result is a drop-in replacement (same call signature and outputs) exposing
    ``.stage``, ``.inner`` and ``unwrap()``; its ``state_dict`` holds the model's keys under
    ``inner.`` and the stage's under ``stage.`` (``stage.body.`` and ``stage.gate.`` when
    residual). ``stage``: a registered stage name
    (``"r2t"``, ``"identity"``, ...); ``placement``: ``"after_projection"`` (default where
    the model has a first ``Linear → activation`` on instances) or ``"input"``;
    ``residual`` (default True): the stage is ``x + Z(stage(x))`` with ``Z`` zero-initialised,
    so the wrapped model starts as ``model`` itself: the recipe ``r2t compare`` measured (ABMIL,
    10 folds × 3 seeds: no test-AUC loss on UCSB / Musk1 / Musk2, where the replacing stage
    lost 0.051 on UCSB; bench/README.md, "The R²T recipe"). ``residual=False`` is the paper's
    stage, replacing the instance features. Other options go to the stage factory (for
    R²T: ``dim``, ``region_num``, ``layout``, ...).
    """
    from .plugins import create_stage, get_manager

    if placement is not None and placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    get_manager().registries["stages"].get(stage)  # unknown stage name: error now, listing the known

    def stage_factory(in_dim: int | None, out_dim: int | None = None) -> nn.Module:
        body = create_stage(stage, in_dim, out_dim, **stage_options)
        if not residual:
            return body
        width = out_dim if out_dim is not None else in_dim
        if width is None or (in_dim is not None and in_dim != width):
            raise ValueError(f"residual=True needs the stage to keep its width, got {in_dim} -> {out_dim}")
        return ResidualStage(body, width)

    pm = get_manager()
    wrapped = pm.hook.r2t_adapt(model=model, stage_factory=stage_factory, placement=placement)
    if wrapped is None:
        asked = ", ".join(f"{name} ({provider})" for name, provider in pm.adapters()) or "(none)"
        raise AdapterError(f"no adapter recognises {type(model).__module__}.{type(model).__qualname__}; "
                           f"adapters asked: {asked}")
    return wrapped


# ---------------------------------------------------------------------- model inspection
def forward_parameters(model: nn.Module) -> dict[str, inspect.Parameter]:
    """The parameters of ``model.forward`` (without ``self``)."""
    try:
        return dict(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return {}


def takes_label(module: nn.Module) -> bool:
    """Whether ``module.forward`` takes a ``label`` argument (CLAM's instance loss needs the
    label during training; the training loop passes it only to models that take it)."""
    return "label" in forward_parameters(module)


def _linears(module: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):  # nn.LazyLinear included (in_features 0 until first call)
            yield name, m


def input_width(module: nn.Module) -> int | None:
    """The module's ``in_dim`` attribute (aggregator contract), else ``in_features`` of its
    first Linear (None if none, or still lazy)."""
    declared = getattr(module, "in_dim", None)
    if isinstance(declared, int) and declared > 0:
        return declared
    for _, lin in _linears(module):
        w = getattr(lin, "in_features", 0)
        return int(w) if w else None
    return None


def find_projection(module: nn.Module, prefix: str = "") -> tuple[str, int] | None:
    """Where the first ``Linear → activation`` on instances of ``module`` ends, and its width.

    Candidates are ``module`` itself (if an ``nn.Sequential``) and its direct ``nn.Sequential``
    children (``proj``, ``fc``, ``attention_net``, ...) that start with ``Linear, activation``
    (optionally then ``Dropout``), and whose Linear is the first Linear of ``module`` -- so a
    Linear → tanh inside a nested attention block is never taken for the projection. Returns
    the submodule path to hook (the Sequential itself when that is all it holds, else its
    activation or dropout child) and the width; None when there is no such block.
    """
    first = next(_linears(module), None)
    if first is None:
        return None
    candidates = [("", module)] if isinstance(module, nn.Sequential) else []
    candidates += [(n, m) for n, m in module.named_children() if isinstance(m, nn.Sequential)]
    for name, m in candidates:
        kids = list(m.children())
        if len(kids) < 2 or kids[0] is not first[1] or not isinstance(kids[1], ACTIVATIONS):
            continue
        end = 2 if len(kids) > 2 and isinstance(kids[2], nn.Dropout) else 1
        path = name if end == len(kids) - 1 else f"{name}.{end}" if name else str(end)
        full = ".".join(p for p in (prefix, path) if p)
        if not full:
            return None  # the whole model is the projection: nothing after it to feed
        return full, int(first[1].out_features)
    return None


# ---------------------------------------------------------------------- wrappers
class R2TWrapper(nn.Module):
    """Base of every wrapped model: ``.inner`` (the model), ``.stage``, ``unwrap()``.

    With ``hook_path`` the stage runs on the output of that submodule of ``inner`` (a
    forward hook active only inside :meth:`stage_context`); subclasses implement
    ``forward`` with the inner model's signature.
    """

    def __init__(self, inner: nn.Module, stage: nn.Module, placement: str,
                 hook_path: str | None = None) -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if (placement == "after_projection") != (hook_path is not None):
            raise ValueError("after_projection needs a hook_path, input placement none")
        self.inner = inner
        self.stage = stage
        self.placement = placement
        self.hook_path = hook_path
        self._ctx: dict[str, Any] | None = None
        self._unwrapped = False
        self._hook: RemovableHandle | None = None
        if hook_path is not None:
            self._hook = inner.get_submodule(hook_path).register_forward_hook(self._after_projection)

    @contextlib.contextmanager
    def stage_context(self, **ctx: Any) -> Iterator[None]:
        """Inside, the hooked projection's output is re-embedded with these inputs."""
        self._check_wrapped()
        previous, self._ctx = self._ctx, ctx
        try:
            yield
        finally:
            self._ctx = previous

    def _after_projection(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self._ctx is None:
            return None
        if not isinstance(output, Tensor):
            raise AdapterError(f"the projection {self.hook_path!r} returned {type(output).__name__}, "
                               "not a tensor; use placement='input'")
        return self.reembed(output, **self._ctx)

    def reembed(self, h: Tensor, mask: Tensor | None = None, coords: Tensor | None = None,
                patch_size: Any = None) -> Tensor:
        """Run the stage on instance features ``h`` (N, C) or (B, N, C)."""
        self._check_wrapped()
        if h.dim() == 3:  # the model batched a single (N, D) bag itself
            mask = mask.unsqueeze(0) if mask is not None and mask.dim() == 1 else mask
            coords = coords.unsqueeze(0) if coords is not None and coords.dim() == 2 else coords
        elif h.dim() == 2:  # the model took its one bag out of a batch of one
            mask = mask[0] if mask is not None and mask.dim() == 2 and mask.shape[0] == 1 else mask
            coords = coords[0] if coords is not None and coords.dim() == 3 and coords.shape[0] == 1 else coords
        if h.dim() not in (2, 3) or (mask is not None and tuple(h.shape[:-1]) != tuple(mask.shape)):
            want = "(N, C) or (B, N, C)" if mask is None else f"{tuple(mask.shape)} + (C,)"
            raise AdapterError(f"instance features at {self.hook_path or 'the input'} have shape "
                               f"{tuple(h.shape)}, expected {want}")
        return self.stage(h, mask=mask, coords=coords, patch_size=patch_size)

    def unwrap(self) -> nn.Module:
        """The inner model, with this wrapper's hook removed; the wrapper is unusable after."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._unwrapped = True
        return self.inner

    def _check_wrapped(self) -> None:
        if self._unwrapped:
            raise RuntimeError("this wrapper was unwrapped(); call the inner model or wrap it again")

    def extra_repr(self) -> str:
        return f"placement={self.placement!r}" + (f", after={self.hook_path!r}" if self.hook_path else "")


class TensorModelWrapper(R2TWrapper):
    """A model whose first argument is a (N, D) / (B, N, D) tensor or a BagBatch.

    ``forward(x, *args, coords=None, patch_size=None, **kwargs)``: ``mask`` is read from the
    call (by name or position) when the model takes one; ``coords`` / ``patch_size`` feed the
    stage and are passed on only if the model takes them.
    """

    def __init__(self, inner: nn.Module, stage: nn.Module, placement: str,
                 hook_path: str | None = None) -> None:
        super().__init__(inner, stage, placement, hook_path)
        self._params = forward_parameters(inner)

    def forward(self, x: Any, *args: Any, coords: Tensor | None = None, patch_size: Any = None,
                **kwargs: Any) -> Any:
        batch = x if isinstance(x, BagBatch) else None
        if batch is not None:
            feats, mask = batch.features, batch.mask
            coords = batch.coords if coords is None else coords
            patch_size = batch.grid_step if patch_size is None else patch_size  # the grid cell
        else:
            if not isinstance(x, Tensor) or x.dim() not in (2, 3):
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise AdapterError(f"{type(self.inner).__name__} wrapped for tensors expects a (N, D) or "
                                   f"(B, N, D) tensor or a BagBatch first, got {shape}")
            feats, mask = x, self._mask_argument(x, args, kwargs)
        for name, value in (("coords", coords), ("patch_size", patch_size)):
            if value is not None and name in self._params:
                kwargs[name] = value
        ctx = {"mask": mask, "coords": coords, "patch_size": patch_size}
        if self.placement == "input":
            new = self.reembed(feats, **ctx)
            x = dataclasses.replace(batch, features=new) if batch is not None else new
            return self.inner(x, *args, **kwargs)
        with self.stage_context(**ctx):
            return self.inner(x, *args, **kwargs)

    def _mask_argument(self, x: Tensor, args: tuple, kwargs: dict) -> Tensor | None:
        if "mask" in kwargs:
            return kwargs["mask"]
        names = [n for n, p in self._params.items()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if "mask" in names[1:]:
            pos = names.index("mask") - 1
            if pos < len(args):
                return args[pos]
        return None


def resolve_placement(model: nn.Module, found: tuple[str, int] | None, placement: str | None,
                      input_width_of: Callable[[nn.Module], int | None] = input_width,
                      ) -> tuple[str, str | None, int]:
    """(placement, hook path or None, stage width) for ``model``.

    ``found`` is :func:`find_projection`'s answer; without a ``placement`` the stage goes
    after the projection when there is one, else at the input (width from ``input_width_of``).
    """
    if placement is None:
        placement = "after_projection" if found else "input"
    if placement == "after_projection":
        if found is None:
            raise AdapterError(f"{type(model).__name__} has no first Linear → activation block on "
                               "instances to put the stage after; use placement='input'")
        path, width = found
        return placement, path, width
    width = input_width_of(model)
    if width is None:
        raise AdapterError(f"cannot tell the input width of {type(model).__name__} (no initialised "
                           "Linear layer); build the model with its input size first")
    return placement, None, width


def build_tensor_wrapper(model: nn.Module, stage_factory: StageFactory, placement: str | None,
                         search_in: nn.Module | None = None, prefix: str = "") -> TensorModelWrapper:
    """The generic wrapper; the projection is looked for in ``search_in`` (default: the model)."""
    found = find_projection(search_in if search_in is not None else model, prefix)
    placement, path, width = resolve_placement(model, found, placement)
    return TensorModelWrapper(model, stage_factory(width, width), placement, path)


@hookimpl(trylast=True)
def r2t_adapt(model: Any, stage_factory: StageFactory, placement: str | None) -> nn.Module | None:
    """Generic fallback: any module with a Linear layer whose first argument is a tensor."""
    if not isinstance(model, nn.Module) or isinstance(model, R2TWrapper):
        return None
    params = [p for p in forward_parameters(model).values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if not params or next(_linears(model), None) is None:
        return None
    return build_tensor_wrapper(model, stage_factory, placement)
