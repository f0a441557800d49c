"""A slow, obviously-correct R²T written straight from the paper (Tang et al., CVPR 2024).

Explicit loops over regions, heads, query rows and EPEG taps; the EPEG convolution is
applied to the logit map (not through the identity the package's fast path uses). Works
on ONE bag (N, D) and reads parameters from the authors' state-dict keys, so it also
checks the key mapping of the import. Float64 throughout, for a clean comparison.
Imported by the tests next to it as ``from . import reference_loops``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def layer_norm(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def regions_of(n: int, region_num: int) -> tuple[int, int, list[list[int]]]:
    """The reference's file-order grid: grid side H, region side M, and for each region the file positions of its slots
    (row-major inside the region; a position >= n is a zero pad)."""
    h0 = math.ceil(math.sqrt(n))
    h = math.ceil(h0 / region_num) * region_num
    m = h // region_num
    regions = []
    for rr in range(region_num):
        for rc in range(region_num):
            slots = []
            for i in range(m):
                for j in range(m):
                    row, col = rr * m + i, rc * m + j
                    slots.append(row * h + col)
            regions.append(slots)
    return h, m, regions


def softmax(v: Tensor, dim: int) -> Tensor:
    e = torch.exp(v - v.max(dim=dim, keepdim=True).values)
    return e / e.sum(dim=dim, keepdim=True)


def mhsa(x: Tensor, qkv_w, qkv_b, proj_w, proj_b, heads: int, pe_w=None, pe_b=None) -> Tensor:
    """Multi-head self-attention over the rows of x (P, C), EPEG on the logits if given."""
    p, c = x.shape
    d = c // heads
    qkv = x @ qkv_w.T + qkv_b
    q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
    out = torch.zeros(p, c, dtype=x.dtype)
    for hd in range(heads):
        qh = q[:, hd * d : (hd + 1) * d] * d ** -0.5
        kh = k[:, hd * d : (hd + 1) * d]
        vh = v[:, hd * d : (hd + 1) * d]
        logits = torch.zeros(p, p, dtype=x.dtype)
        for i in range(p):
            for j in range(p):
                logits[i, j] = torch.dot(qh[i], kh[j])
        if pe_w is not None:
            ks = pe_w.shape[2]
            pos = torch.zeros(p, p, dtype=x.dtype)
            for i in range(p):
                pos[i] += pe_b[hd]
                for t in range(ks):
                    src = i + t - ks // 2
                    if 0 <= src < p:
                        pos[i] += pe_w[hd, 0, t, 0] * logits[src]
            logits = logits + pos
        attn = softmax(logits, dim=1)
        for i in range(p):
            out[i, hd * d : (hd + 1) * d] = attn[i] @ vh
    return out @ proj_w.T + proj_b


def rmsa(x: Tensor, sd: dict, pre: str, heads: int, region_num: int, epeg: bool) -> Tensor:
    n, c = x.shape
    h, m, regions = regions_of(n, region_num)
    padded = torch.zeros(h * h, c, dtype=x.dtype)
    padded[:n] = x
    out = torch.zeros(h * h, c, dtype=x.dtype)
    for slots in regions:
        tokens = padded[slots]
        y = mhsa(tokens, sd[pre + "qkv.weight"], sd[pre + "qkv.bias"], sd[pre + "proj.weight"],
                 sd[pre + "proj.bias"], heads,
                 sd.get(pre + "pe.weight") if epeg else None, sd.get(pre + "pe.bias") if epeg else None)
        for s, pos in enumerate(slots):
            out[pos] = y[s]
    return out[:n]


def crmsa(x: Tensor, sd: dict, pre: str, heads: int, mlp: bool) -> Tensor:
    n, c = x.shape
    h, m, regions = regions_of(n, 8)
    padded = torch.zeros(h * h, c, dtype=x.dtype)
    padded[:n] = x
    if mlp:
        phi = lambda t: torch.tanh(t @ sd[pre + "phi.0.weight"].T) @ sd[pre + "phi.2.weight"].T  # noqa: E731
    else:
        phi = lambda t: t @ sd[pre + "phi"]  # noqa: E731
    logits, reps = [], []
    for slots in regions:
        tokens = padded[slots]
        g = phi(tokens)  # (P, K)
        combine = softmax(g, dim=0)
        reps.append(combine.T @ tokens)  # (K, C)
        logits.append(g)
    kk = reps[0].shape[0]
    mixed = [torch.zeros_like(reps[0]) for _ in regions]
    for k in range(kk):
        seq = torch.stack([r[k] for r in reps])  # (R, C)
        y = mhsa(seq, sd[pre + "attn.qkv.weight"], sd[pre + "attn.qkv.bias"],
                 sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"], heads)
        for r in range(len(regions)):
            mixed[r][k] = y[r]
    out = torch.zeros(h * h, c, dtype=x.dtype)
    for r, slots in enumerate(regions):
        g = logits[r]
        dispatch = softmax(g, dim=1)
        gmin, gmax = g.min(dim=0).values, g.max(dim=0).values
        for s, pos in enumerate(slots):
            acc = torch.zeros(c, dtype=x.dtype)
            for k in range(kk):
                mm = (g[s, k] - gmin[k]) / (gmax[k] - gmin[k] + 1e-8)
                acc += mm * dispatch[s, k] * mixed[r][k]
            out[pos] = acc
    return out[:n]


def r2t_abmil(sd: dict, x: Tensor, *, heads: int, crmsa_heads: int, region_num: int,
              all_shortcut: bool, crmsa_mlp: bool, epeg: bool, abmil_act: str, act: str = "relu"):
    """(embedding (N, C), logits (n_classes,)) of the reference R²T-ABMIL for one bag."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    e = "online_encoder."
    hdn = x @ sd["patch_to_emb.0.weight"].T + sd["patch_to_emb.0.bias"]
    hdn = torch.relu(hdn) if act == "relu" else torch.nn.functional.gelu(hdn)
    shortcut = hdn
    i = 0
    while f"{e}layers.{i}.norm.weight" in sd:
        ln = layer_norm(hdn, sd[f"{e}layers.{i}.norm.weight"], sd[f"{e}layers.{i}.norm.bias"])
        hdn = hdn + rmsa(ln, sd, f"{e}layers.{i}.attn.attn.", heads, region_num, epeg)
        i += 1
    ln = layer_norm(hdn, sd[f"{e}cr_msa.norm.weight"], sd[f"{e}cr_msa.norm.bias"])
    hdn = hdn + crmsa(ln, sd, f"{e}cr_msa.attn.", crmsa_heads, crmsa_mlp)
    if all_shortcut:
        hdn = hdn + shortcut
    hdn = layer_norm(hdn, sd[f"{e}norm.weight"], sd[f"{e}norm.bias"])
    a = hdn @ sd["pool_fn.attention.attention.0.weight"].T
    a = torch.tanh(a) if abmil_act == "tanh" else torch.relu(a)
    a = (a @ sd["pool_fn.attention.attention.2.weight"].T).squeeze(-1)
    w = softmax(a, dim=0)
    pooled = w @ hdn
    return hdn, pooled @ sd["predictor.weight"].T + sd["predictor.bias"]
