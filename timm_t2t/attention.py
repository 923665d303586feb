"""Attention kernels of T2T-ViT: softmax dot-product attention and the Performer's linear attention.

Each kernel picks its implementation from the device and dtype it is given, so that one model is fast in every
precision it runs in:

- Softmax attention uses the fused kernel (`F.scaled_dot_product_attention`) when timm's switch allows it. On the
  CPU in reduced precision, which of the fused kernel and the eager matmul-softmax-matmul path is faster depends on
  the processor and on whether gradients are needed (on one Xeon with AMX the fused kernel won inference by 1.7x
  and lost training by 2.7x; on an EPYC eager won both), so there the two are timed once per kind of call (dtype,
  grad mode, head width, batch x heads and tokens to the next power of two, threads) on the inputs at hand, and the
  faster one is kept for the process (`cpu_kernel_choices` lists the choices). Setting `TIMM_FUSED_ATTN=1` forces
  the fused kernel everywhere, `0` the eager one, as for timm's own models.
- The Performer estimates softmax attention with positive random features. Its exponentials are stabilised so
  that nothing overflows in any precision; the feature maps are summed in float32.
"""
import logging
import math
import os
import time
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from timm.layers import use_fused_attn

from ._compat import is_autocast_available, is_compiling, register_notrace_function

__all__ = ['attention_kernel_flags', 'cpu_kernel_choices', 'dot_product_attention', 'performer_attention']

_logger = logging.getLogger(__name__)

# (dtype, grad mode, head width, batch x heads bucket, tokens bucket, threads) -> the fused kernel is faster
_CPU_KERNEL_CHOICES: Dict[Tuple, bool] = {}
_TIMING_ROUNDS = 3


def attention_kernel_flags() -> Tuple[bool, bool]:
    """(fused, forced) for a new attention layer: whether timm's switch allows the fused kernel, and whether the
    user asked for it explicitly (`TIMM_FUSED_ATTN` set), in which case it is used on every device and dtype."""
    fused = use_fused_attn()
    return fused, fused and bool(os.environ.get('TIMM_FUSED_ATTN', '').strip())


def cpu_kernel_choices() -> Dict[Tuple, str]:
    """The kernels chosen by timing in this process: (dtype, grad, head_dim, batch x heads up to, tokens up to,
    threads) -> 'fused' or 'eager'."""
    return {key: 'fused' if fused else 'eager' for key, fused in _CPU_KERNEL_CHOICES.items()}


def _eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout_p: float) -> torch.Tensor:
    attn = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    if dropout_p > 0.:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


def _fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout_p: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _seconds(kernel: Callable, inputs: Tuple[torch.Tensor, ...], scale: float, backward: bool) -> float:
    """Best of a few timed calls (after one warm-up) of a kernel, with its backward pass when training."""
    best = math.inf
    for round_index in range(_TIMING_ROUNDS + 1):
        start = time.perf_counter()
        out = kernel(*inputs, scale, 0.)
        if backward:
            out.sum().backward()
        if round_index:
            best = min(best, time.perf_counter() - start)
    return best


@torch.jit.unused
def _fused_is_faster_on_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> bool:
    """Whether the fused kernel beats the eager one for calls like this one, timed once per kind of call."""
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    key = (q.dtype, training, q.shape[-1], _next_power_of_two(q.shape[0] * q.shape[1]),
           _next_power_of_two(q.shape[-2]), torch.get_num_threads())
    fused = _CPU_KERNEL_CHOICES.get(key)
    if fused is None:
        with torch.enable_grad() if training else torch.no_grad():
            inputs = tuple(t.detach().requires_grad_(training) for t in (q, k, v))
            fused_time = _seconds(_fused_attention, inputs, scale, training)
            eager_time = _seconds(_eager_attention, inputs, scale, training)
        fused = _CPU_KERNEL_CHOICES[key] = fused_time < eager_time
        _logger.debug(f'CPU attention for {key}: fused {fused_time * 1e3:.2f} ms, eager {eager_time * 1e3:.2f} ms.')
    return fused


@torch.fx.wrap
@register_notrace_function
def dot_product_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        dropout_p: float = 0.,
        fused: bool = True,
        forced: bool = False,
) -> torch.Tensor:
    """Softmax attention softmax(q k^T * scale) v over (B, heads, L, head_dim) inputs.

    Args:
        q, k, v: Queries, keys and values (B, H, L, D).
        scale: Multiplies q k^T.
        dropout_p: Dropout on the attention weights.
        fused: The fused kernel is allowed (timm's switch).
        forced: Use the fused kernel even where the eager path is faster.
    """
    if not torch.jit.is_scripting():  # timed in eager runs only: a scripted, traced or compiled graph takes fused
        low_precision = q.dtype == torch.bfloat16 or q.dtype == torch.float16
        if fused and not forced and low_precision and q.device.type == 'cpu':
            if not torch.jit.is_tracing() and not is_compiling():
                fused = _fused_is_faster_on_cpu(q, k, v, scale)
    if fused:
        return _fused_attention(q, k, v, scale, dropout_p)
    return _eager_attention(q, k, v, scale, dropout_p)


def _softmax_kernel_exponents(x: torch.Tensor, random_features: torch.Tensor) -> torch.Tensor:
    """Exponents x w^T - |x|^2 / 2 (B, L, m) of the positive random features of the softmax kernel."""
    exponents = F.linear(x, random_features)  # in-place updates below keep autograd's saved tensors intact
    return exponents.sub_(torch.linalg.vector_norm(x, dim=-1, keepdim=True).square().mul_(0.5))


def _performer_attention_fp32(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        random_features: torch.Tensor,
        eps: float,
) -> torch.Tensor:
    dtype = v.dtype
    random_features = random_features.float()
    num_features = random_features.shape[0]
    # exp(zq_i + zk_j) is computed as exp(zq_i + c - s_i) * exp(zk_j - c): c, the keys' maximum per feature, and
    # s_i, each query's maximum, cancel in the ratio below. Every factor is at most 1 and each query's largest
    # term is 1, so nothing overflows, the normalizer is at least 1, and only negligible terms can underflow.
    k_exponents = _softmax_kernel_exponents(k.float(), random_features)  # (B, L, m)
    key_max = k_exponents.amax(dim=-2, keepdim=True).detach()  # (B, 1, m)
    k_features = k_exponents.sub_(key_max).exp_()
    q_exponents = _softmax_kernel_exponents(q.float(), random_features).add_(key_max)
    query_max = q_exponents.amax(dim=-1, keepdim=True).detach()  # (B, L, 1)
    q_features = q_exponents.sub_(query_max).exp_()
    kv = k_features.transpose(-2, -1) @ v.float()  # (B, m, D)
    normalizer = q_features @ k_features.sum(dim=-2).unsqueeze(-1)  # (B, L, 1)
    if eps > 0.:
        # The normalizer above is m * exp(-s_i) times the unstabilised one (features carry 1/sqrt(m) each), so
        # eps joins it as eps * m * exp(-s_i), formed in log space: where the unstabilised normalizer is tiny or
        # underflows, eps dominates as it does there, and an infinite term gives the zero output it gives there.
        normalizer.add_((math.log(eps * num_features) - query_max).exp_())
    return ((q_features / normalizer) @ kv).to(dtype)


@torch.jit.unused
def _performer_attention_autocast_off(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        random_features: torch.Tensor,
        eps: float,
) -> torch.Tensor:
    device_type = q.device.type
    if not is_autocast_available(device_type):  # e.g. the meta device
        return _performer_attention_fp32(q, k, v, random_features, eps)
    with torch.autocast(device_type=device_type, enabled=False):
        return _performer_attention_fp32(q, k, v, random_features, eps)


@torch.fx.wrap
@register_notrace_function
def performer_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        random_features: torch.Tensor,
        eps: float = 1e-8,
) -> torch.Tensor:
    """Performer (FAVOR+) attention phi(q) (phi(k)^T v) / (phi(q) sum_j phi(k_j)), linear in tokens.

    The reference's function, eps included, in every regime where the reference is finite: exponentials are
    stabilised per query and per feature, and `eps` is added in the stabilised scale, so it weighs exactly as
    in the reference's unstabilised normalizer (also where that normalizer underflows). Computed in float32 with
    autocast off, so nothing overflows under fp16 / bf16 autocast; the result is returned in the dtype of `v`.
    No L x L matrix is formed.

    Args:
        q, k, v: Queries, keys and values (B, L, D).
        random_features: Fixed random feature matrix w (m, D).
        eps: Added to the reference's (unstabilised) normalizer.
    """
    if torch.jit.is_scripting():
        return _performer_attention_fp32(q, k, v, random_features, eps)
    return _performer_attention_autocast_off(q, k, v, random_features, eps)
