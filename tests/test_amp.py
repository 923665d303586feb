"""The Performer under fp16 / bf16 autocast: finite forward and backward where the reference produces NaN."""
import math

import pytest
import torch

from benchmarks.reference_t2t import ReferenceT2TViT, strip_module_prefix
from timm_t2t import T2TViT
from timm_t2t.attention import _performer_attention_fp32, performer_attention

from parity_cases import load_parity_case



def _cpu_has_half_layer_norm() -> bool:
    try:
        torch.nn.functional.layer_norm(torch.ones(1, 2, dtype=torch.float16), (2,))
        return True
    except RuntimeError:
        return False


CPU_FP16 = pytest.mark.skipif(not _cpu_has_half_layer_norm(),
                              reason='this torch (2.2) has no CPU float16 LayerNorm: fp16 autocast cannot run on the CPU')
MODEL_DTYPES = [pytest.param(torch.float16, id='fp16', marks=CPU_FP16), pytest.param(torch.bfloat16, id='bf16')]
# error against float32 logits, from the precision of the autocast matmuls outside the Performer kernel
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _large_activation_weights(scale: float = 10.) -> dict:
    """Reference weights whose first T2T layer makes q and k `scale` times larger, as trained layers can."""
    case = load_parity_case('small_performer_64')
    state_dict = strip_module_prefix(case.checkpoint['state_dict'])
    state_dict['tokens_to_token.attention1.kqv.weight'] = state_dict['tokens_to_token.attention1.kqv.weight'] * scale
    return state_dict


@pytest.mark.parametrize('dtype', MODEL_DTYPES)
def test_finite_under_autocast_where_the_reference_is_not(dtype):
    case = load_parity_case('small_performer_64')
    weights = _large_activation_weights()
    reference = ReferenceT2TViT(**case.reference_config).eval()
    reference.load_state_dict(weights)
    model = T2TViT(**case.model_kwargs).eval()
    model.load_state_dict(weights)
    with torch.no_grad():
        exact = model(case.inputs)
        with torch.autocast('cpu', dtype=dtype):
            ours = model(case.inputs)
            theirs = reference(case.inputs)
    if dtype == torch.float16:
        assert not theirs.isfinite().all()  # the reference's 1e-8 vanishes in fp16: 0 / 0
    assert ours.isfinite().all()
    torch.testing.assert_close(ours.float(), exact, rtol=0, atol=TOLERANCE[dtype])


@pytest.mark.parametrize('dtype', MODEL_DTYPES)
def test_backward_is_finite_under_autocast(dtype):
    case = load_parity_case('small_performer_64')
    model = T2TViT(**case.model_kwargs).train()
    model.load_state_dict(_large_activation_weights())
    with torch.autocast('cpu', dtype=dtype):
        loss = model(case.inputs * 50).float().logsumexp(dim=-1).mean()
    loss.backward()
    assert loss.isfinite()
    assert all(p.grad.isfinite().all() for p in model.parameters())


def _favor_float64(q, k, v, w, eps):
    """The Performer estimate as the reference computes it, without a stabiliser, in float64 (where it neither
    overflows nor underflows here)."""
    q, k, v, w = (t.double() for t in (q, k, v, w))
    features = lambda x: torch.exp(x @ w.t() - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(w.shape[0])
    qf, kf = features(q), features(k)
    return (qf @ (kf.transpose(-2, -1) @ v)) / (qf @ kf.sum(-2).unsqueeze(-1) + eps)


@pytest.mark.parametrize('eps', [0., 1e-8], ids=['no_eps', 'reference_eps'])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
@pytest.mark.parametrize('scale', [1., 8., 20.])
def test_kernel_matches_float64_for_large_queries_and_keys(dtype, scale, eps):
    """Without eps the normalised estimate is O(1) at every scale; with the reference's eps, the normalizer falls
    below eps as |q|, |k| grow and the output goes to 0 as the reference's does (float64 shows what it is)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 256, 64) for _ in range(3))
    q, k = q * scale / 8, k * scale / 8  # |q|^2 / 2 up to 200: exp underflows in fp16 and bf16 alike
    w = torch.nn.init.orthogonal_(torch.empty(32, 64)) * math.sqrt(32)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)  # the float64 estimate sees the same rounded inputs
    expected = _favor_float64(q, k, v, w, eps)
    with torch.autocast('cpu', dtype=dtype):
        out = performer_attention(q, k, v, w, eps)
    assert out.dtype == dtype and out.isfinite().all()
    tolerance = 0.01 * max(expected.abs().max().item(), 1e-6)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tolerance)


def test_kernel_memory_is_linear_in_tokens():
    tokens, width = 4096, 64
    q, k, v = (torch.randn(1, tokens, width) for _ in range(3))
    w = torch.randn(32, width)

    class Kernel(torch.nn.Module):
        def forward(self, q, k, v, w):
            return _performer_attention_fp32(q, k, v, w, 1e-8)

    graph = torch.export.export(Kernel(), (q, k, v, w)).graph
    sizes = [n.meta['val'].numel() for n in graph.nodes if isinstance(n.meta.get('val'), torch.Tensor)]
    assert max(sizes) == tokens * width  # the inputs are the largest tensors; softmax attention would hold 4096^2
