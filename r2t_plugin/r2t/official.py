"""Checkpoints trained with the authors' R²T code (Tang et al., CVPR 2024): import and export.

The README's section "Loading checkpoints trained with the authors' code" shows the use.

The reference stores no hyperparameters. Shapes tell the input width, width, heads (from
the EPEG kernel), K, epeg_k, number of layers, number of classes and whether Φ is an MLP;
``crmsa_heads``, ``all_shortcut`` and ``attn_act`` (the ABMIL attention's activation) must
come from the caller or a preset, because a wrong guess changes outputs silently.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .model import R2TABMIL
from .stage import R2T

__all__ = ["PRESETS", "load_official_checkpoint", "to_official_state_dict", "official_key", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: an authors' R²T file or a best.pt of this package (``r2t_plugin.models``)."""


# Published per-dataset settings of the authors' runs; all use n_layers 2 and a tanh ABMIL activation.
PRESETS: dict[str, dict[str, Any]] = {
    "C16-R50": dict(epeg_k=15, crmsa_k=1, crmsa_heads=8, all_shortcut=True, crmsa_mlp=False, in_dim=1024),
    "C16-PLIP": dict(epeg_k=9, crmsa_k=3, crmsa_heads=8, all_shortcut=True, crmsa_mlp=False, in_dim=512),
    "BRCA-R50": dict(epeg_k=17, crmsa_k=3, crmsa_heads=1, all_shortcut=False, crmsa_mlp=False, in_dim=1024),
    "BRCA-PLIP": dict(epeg_k=15, crmsa_k=1, crmsa_heads=8, all_shortcut=True, crmsa_mlp=False, in_dim=512),
    "NSCLC-R50": dict(epeg_k=21, crmsa_k=5, crmsa_heads=8, all_shortcut=False, crmsa_mlp=False, in_dim=1024),
    "NSCLC-PLIP": dict(epeg_k=13, crmsa_k=3, crmsa_heads=1, all_shortcut=True, crmsa_mlp=True, in_dim=512),
    "survival": dict(crmsa_heads=8, all_shortcut=False, crmsa_mlp=False, in_dim=1024),
}
for _p in PRESETS.values():
    _p.update(n_layers=2, attn_act="tanh")

_ENC = "online_encoder."
# this package's key -> the reference's key, for what is not a plain rename of the stage
_HEAD = {
    "stage.proj.0.weight": "patch_to_emb.0.weight", "stage.proj.0.bias": "patch_to_emb.0.bias",
    "pool.attention.0.weight": "pool_fn.attention.attention.0.weight",
    "pool.attention.2.weight": "pool_fn.attention.attention.2.weight",
    "classifier.weight": "predictor.weight", "classifier.bias": "predictor.bias",
}
_STAGE = [  # (our prefix, the reference's prefix) inside the encoder
    (re.compile(r"^layers\.(\d+)\.attn\."), r"layers.\1.attn.attn."),
    (re.compile(r"^crmsa\.attn\.phi"), "cr_msa.attn.phi"),
    (re.compile(r"^crmsa\.attn\."), "cr_msa.attn.attn."),
    (re.compile(r"^crmsa\.norm\."), "cr_msa.norm."),
]


def official_key(ours: str, encoder_only: bool) -> str:
    """This package's state-dict key -> the reference's key."""
    if not encoder_only:
        if ours in _HEAD:
            return _HEAD[ours]
        ours = ours[len("stage."):]
    for pattern, repl in _STAGE:
        if pattern.match(ours):
            ours = pattern.sub(repl, ours, count=1)
            break
    return ours if encoder_only else _ENC + ours


def _read(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """The state dict of ``source`` (path or mapping), unwrapped from ``{'model': ...}``."""
    where = "the given state dict"
    if not isinstance(source, Mapping):
        where = str(source)
        if not os.path.exists(where):
            raise FileNotFoundError(f"checkpoint not found: {where}")
        try:
            source = torch.load(where, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"{where}: torch.load(weights_only=True) refused this file ({str(err).splitlines()[0]}). "
                "It is probably one of the reference's per-epoch resume files, which also hold "
                "optimizer and random-generator state. Load the best-model file the reference "
                "saves instead (a dict {'model': state_dict}); r2t-plugin never unpickles "
                "arbitrary objects."
            ) from err
    sd = source
    if "model" in sd and isinstance(sd["model"], Mapping):
        sd = sd["model"]
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{where}: entries that are not tensors: {bad[:5]}; expected a state dict")
    out = dict(sd)
    consume_prefix_in_state_dict_if_present(out, "module.")  # saved from a DataParallel model
    return out, where


def _infer(sd: dict[str, Tensor], where: str) -> dict[str, Any]:
    """Everything the shapes of the reference's state dict tell."""
    enc = _ENC if any(k.startswith(_ENC) for k in sd) else ""
    info: dict[str, Any] = {"encoder_only": not enc}
    try:
        dim = sd[f"{enc}norm.weight"].shape[0]
    except KeyError:
        raise CheckpointError(f"{where}: no final LayerNorm '{enc}norm.weight': not an R²T checkpoint") from None
    info["dim"] = dim
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(rf"^{re.escape(enc)}layers\.(\d+)\.", k))})
    crmsa = f"{enc}cr_msa.norm.weight" in sd
    info["crmsa"] = crmsa
    info["n_layers"] = len(layers) + (1 if crmsa else 0)
    pe = sd.get(f"{enc}layers.0.attn.attn.pe.weight")
    info["epeg"] = pe is not None
    if pe is not None:
        info["heads"], info["epeg_k"] = pe.shape[0], pe.shape[2]
    if crmsa:
        if f"{enc}cr_msa.attn.phi" in sd:
            info["crmsa_mlp"], info["crmsa_k"] = False, sd[f"{enc}cr_msa.attn.phi"].shape[1]
        elif f"{enc}cr_msa.attn.phi.2.weight" in sd:
            info["crmsa_mlp"], info["crmsa_k"] = True, sd[f"{enc}cr_msa.attn.phi.2.weight"].shape[0]
        else:
            raise CheckpointError(f"{where}: CR-MSA without a Φ ('{enc}cr_msa.attn.phi')")
    if enc:
        for key in ("patch_to_emb.0.weight", "predictor.weight"):
            if key not in sd:
                raise CheckpointError(f"{where}: missing key {key!r}: not an R²T-ABMIL checkpoint")
        info["in_dim"] = sd["patch_to_emb.0.weight"].shape[1]
        info["n_out"] = sd["predictor.weight"].shape[0]
        if "pool_fn.attention.attention.0.weight" in sd:
            info["hidden"] = sd["pool_fn.attention.attention.0.weight"].shape[0]
    return info


def load_official_checkpoint(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    preset: str | None = None,
    crmsa_heads: int | None = None,
    all_shortcut: bool | None = None,
    attn_act: str | None = None,
    act: str = "relu",
    region_num: int = 8,
    heads: int | None = None,
) -> R2TABMIL | R2T:
    """Build the reference model of a checkpoint trained with the authors' code.

    ``source``: a path (read with ``weights_only=True``) or a state dict, optionally wrapped
    as ``{'model': ...}`` and with ``module.`` prefixes. Returns an :class:`R2TABMIL` (or a
    bare :class:`R2T` for an encoder-only checkpoint) in official mode, in eval mode.
    ``heads`` is needed only when the checkpoint has no EPEG kernel to read it from.
    """
    sd, where = _read(source)
    info = _infer(sd, where)
    given = dict(crmsa_heads=crmsa_heads, all_shortcut=all_shortcut, attn_act=attn_act)
    if preset is not None:
        if preset not in PRESETS:
            raise CheckpointError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        p = PRESETS[preset]
        for key in given:
            if given[key] is None:
                given[key] = p[key]
        for key in ("epeg_k", "crmsa_k", "crmsa_mlp", "in_dim"):
            if key in p and key in info and info[key] is not None and p[key] != info[key]:
                raise CheckpointError(
                    f"{where}: preset {preset!r} says {key}={p[key]} but the checkpoint's shapes say "
                    f"{info[key]}; pick the preset of the run that produced this checkpoint"
                )
    needed = ["crmsa_heads", "all_shortcut"] if info["crmsa"] else ["all_shortcut"]
    if not info["encoder_only"]:
        needed.append("attn_act")
    missing = [k for k in needed if given[k] is None]
    if missing:
        raise CheckpointError(
            f"{where}: the checkpoint's shapes do not tell {', '.join(missing)} and a wrong guess "
            f"changes outputs silently; pass them as keyword arguments or give preset= one of "
            f"{', '.join(PRESETS)}"
        )
    if not info["epeg"]:
        if heads is None:
            raise CheckpointError(f"{where}: no EPEG kernel to read the number of heads from; pass heads=")
        info["heads"] = heads
    stage_opts = dict(
        n_layers=info["n_layers"], heads=info["heads"], region_num=region_num, epeg=info["epeg"],
        epeg_k=info.get("epeg_k", 15), crmsa=info["crmsa"], crmsa_k=info.get("crmsa_k", 3),
        crmsa_heads=given["crmsa_heads"] or 8, crmsa_mlp=info.get("crmsa_mlp", False),
        all_shortcut=bool(given["all_shortcut"]), act=act,
    )
    if info["encoder_only"]:
        model: R2TABMIL | R2T = R2T.official(None, info["dim"], **stage_opts)
    else:
        model = R2TABMIL.official(info["in_dim"], info["n_out"], info["dim"], attn_act=given["attn_act"],
                                  hidden=info.get("hidden", 128), **stage_opts)
    names = {official_key(k, info["encoder_only"]): k for k in model.state_dict()}
    unknown = [k for k in sd if k not in names]
    if unknown:
        raise CheckpointError(f"{where}: unexpected key(s) for an R²T checkpoint: {', '.join(unknown)}")
    missing_keys = [k for k in names if k not in sd]
    if missing_keys:
        raise CheckpointError(f"{where}: missing key(s): {', '.join(missing_keys)}")
    expected = model.state_dict()
    for ref, ours in names.items():
        if expected[ours].shape != sd[ref].shape:
            raise CheckpointError(f"{where}: key {ref} has shape {tuple(sd[ref].shape)}, "
                                  f"expected {tuple(expected[ours].shape)}")
    model.load_state_dict({ours: sd[ref] for ref, ours in names.items()}, strict=True)
    return model.eval()


def to_official_state_dict(model: R2TABMIL | R2T) -> dict[str, Tensor]:
    """The model's parameters under the reference's keys, ready for its code."""
    encoder_only = isinstance(model, R2T)
    stage = model if encoder_only else model.stage
    if stage.head is not None:
        raise CheckpointError("the reference has no output projection (out_dim != dim)")
    if not encoder_only and stage.proj is None:
        raise CheckpointError("the reference R²T-ABMIL always has an input projection (in_dim)")
    if encoder_only and stage.proj is not None:
        raise CheckpointError("the reference's encoder-only mode has no input projection (in_dim must be None)")
    return {official_key(k, encoder_only): v for k, v in model.state_dict().items()}
