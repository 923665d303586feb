"""The T2T module's own time in a benchmark configuration: forward, and forward + backward on the path users run and
on the plain path (autograd through the soft splits' unfold views, as before `soft_split_adjoint`; a forward without
gradients runs the plain ops on both), timed interleaved, beside its floor: the same module's linear layers alone on
inputs of their real shapes.

`benchmarks/benchmark.py` calls `module_times` for each T2T-ViT entry it profiles.
"""
import statistics
import time
from typing import Callable, Dict, Optional
from unittest import mock

import torch

from timm_t2t import tokens_to_token
from timm_t2t.tokens_to_token import TokensToToken

ROUNDS = 7


def _plain_soft_splits(fn: Callable[[], None]) -> Callable[[], None]:
    def run():
        with mock.patch.object(tokens_to_token, '_soft_split_op', None):
            fn()
    return run


def _median_ms(steps: Dict[str, Callable[[], None]], rounds: int) -> Dict[str, float]:
    for step in steps.values():
        step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def _linear_floor(module: TokensToToken, x: torch.Tensor, dtype: Optional[torch.dtype]) -> Callable[[], None]:
    """Every linear layer of the module once, on a random input of the shape it sees for `x`."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m, i[0].shape)))
             for m in module.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        module(x)
    for hook in hooks:
        hook.remove()
    inputs = [(m, torch.randn(shape, device=x.device, dtype=dtype or m.weight.dtype)) for m, shape in shapes]

    def run():
        with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            for linear, data in inputs:
                linear(data)
    return run


def module_times(model: torch.nn.Module, x: torch.Tensor, autocast_dtype: Optional[torch.dtype],
                 rounds: int = ROUNDS) -> Optional[Dict[str, float]]:
    """ms of the T2T module of `model` on `x`: forward, forward + backward (gradients of its parameters) on the path
    users run and on the plain path, and its linear layers alone; None for a model without one."""
    module = getattr(model, 'tokens_to_token', None)
    if not isinstance(module, TokensToToken):
        return None
    autocast = (lambda: torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None))
    training = module.training

    def forward():
        with torch.no_grad(), autocast():
            module(x)

    def forward_backward():
        with autocast():
            tokens = module(x)[0]
        tokens.float().sum().backward()

    module.eval()
    try:
        times = _median_ms({
            'forward': forward,
            'forward_backward': forward_backward, 'forward_backward_plain': _plain_soft_splits(forward_backward),
            'linear_floor': _linear_floor(module, x, autocast_dtype),
        }, rounds)
    finally:
        module.train(training)
        module.zero_grad(set_to_none=True)
    return times
