"""The CPU attention kernel is chosen by timing on the machine at hand, per kind of call, within timm's switch."""
import pytest
import torch

from timm_t2t import attention
from timm_t2t.attention import cpu_kernel_choices, dot_product_attention

from fresh_python import run_python


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(attention, '_CPU_KERNEL_CHOICES', {})


def _qkv(tokens: int = 40, requires_grad: bool = False):
    torch.manual_seed(0)
    return tuple(torch.randn(2, 3, tokens, 16, dtype=torch.bfloat16, requires_grad=requires_grad) for _ in range(3))


def _fake_timings(monkeypatch, fused_seconds: float, eager_seconds: float) -> list:
    calls = []

    def seconds(kernel, inputs, scale, backward):
        calls.append((kernel.__name__, backward))
        return fused_seconds if kernel is attention._fused_attention else eager_seconds
    monkeypatch.setattr(attention, '_seconds', seconds)
    return calls


@pytest.mark.parametrize('fused_wins', [True, False])
def test_the_faster_kernel_is_used(monkeypatch, fused_wins):
    calls = _fake_timings(monkeypatch, fused_seconds=1. if fused_wins else 2., eager_seconds=1.5)
    q, k, v = _qkv()
    out = dot_product_attention(q, k, v, 0.25)
    winner = attention._fused_attention if fused_wins else attention._eager_attention
    assert torch.equal(out, winner(q, k, v, 0.25, 0.))
    assert calls == [('_fused_attention', False), ('_eager_attention', False)]
    assert list(cpu_kernel_choices().values()) == ['fused' if fused_wins else 'eager']


def test_timed_once_per_kind_of_call_and_per_grad_mode(monkeypatch):
    calls = _fake_timings(monkeypatch, fused_seconds=1., eager_seconds=2.)
    q, k, v = _qkv(tokens=40)
    dot_product_attention(q, k, v, 0.25)
    dot_product_attention(*_qkv(tokens=50), 0.25)  # 40 and 50 tokens: both up to 64
    assert len(calls) == 2 and len(cpu_kernel_choices()) == 1
    dot_product_attention(*_qkv(tokens=100), 0.25)
    q, k, v = _qkv(requires_grad=True)
    dot_product_attention(q, k, v, 0.25).sum().backward()
    assert calls[2:] == [('_fused_attention', False), ('_eager_attention', False),
                         ('_fused_attention', True), ('_eager_attention', True)]
    assert sorted(key[1] for key in cpu_kernel_choices()) == [False, False, True]
    assert q.grad is not None and q.grad.isfinite().all()


def test_real_timing_gives_either_kernel_within_round_off():
    q, k, v = _qkv()
    out = dot_product_attention(q, k, v, 0.25)
    expected = attention._eager_attention(q.double(), k.double(), v.double(), 0.25, 0.)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-2)
    assert len(cpu_kernel_choices()) == 1


@pytest.mark.parametrize('fused, forced, dtype, kernel', [
    (True, True, torch.bfloat16, '_fused_attention'),   # TIMM_FUSED_ATTN=1: fused everywhere
    (False, False, torch.bfloat16, '_eager_attention'),  # TIMM_FUSED_ATTN=0, or timm's switch off: eager
    (True, False, torch.float32, '_fused_attention'),   # float32: fused where allowed
])
def test_switch_and_float32_take_no_timing(monkeypatch, fused, forced, dtype, kernel):
    calls = _fake_timings(monkeypatch, 1., 1.)
    q, k, v = (t.to(dtype) for t in _qkv())
    out = dot_product_attention(q, k, v, 0.25, fused=fused, forced=forced)
    assert torch.equal(out, getattr(attention, kernel)(q, k, v, 0.25, 0.))
    assert calls == [] and cpu_kernel_choices() == {}


def test_compiled_graph_takes_the_fused_kernel_without_timing(monkeypatch):
    calls = _fake_timings(monkeypatch, 2., 1.)
    q, k, v = _qkv()
    compiled = torch.compile(lambda q, k, v: dot_product_attention(q, k, v, 0.25), backend='eager', fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), attention._fused_attention(q, k, v, 0.25, 0.))
    assert calls == []


@pytest.mark.parametrize('value, fused, forced', [('0', False, False), ('1', True, True), (None, True, False)])
def test_timm_switch_decides_when_set(value, fused, forced):
    code = ('import json, timm\nm = timm.create_model("t2t_vit_7", img_size=64)\n'
            'a = m.blocks[0].attn\nprint(json.dumps([a.fused_attn, a.fused_attn_forced]))')
    assert run_python(code, {} if value is None else {'TIMM_FUSED_ATTN': value}) == [fused, forced]
