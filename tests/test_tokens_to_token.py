"""The Tokens-to-Token module's fast path against its plain path.

Eager runs take each soft split as one operator whose backward is `soft_split_adjoint`; scripted, traced and exported
graphs keep the plain ops (autograd through the unfold views). Both give the same tokens, and gradients equal to
float32 round-off, for every soft-split geometry, both T2T layer kinds, and odd, non-square and dynamic sizes.
"""
from unittest import mock

import pytest
import timm
import torch

from timm_t2t import tokens_to_token
from timm_t2t.tokens_to_token import DEFAULT_SOFT_SPLITS, SoftSplit, TokensToToken, soft_split, soft_split_adjoint

# the package's own geometries (first split on images, the others on token maps), and others T2TPatchEmbed takes
GEOMETRIES = [(7, 4, 2), (3, 2, 1), (5, 3, 1), (4, 4, 0), (2, 2, 0), (3, 1, 1)]


def _plain(fn, *args):
    with mock.patch.object(tokens_to_token, '_soft_split_op', None):
        return fn(*args)


def _token_map(batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """A re-structurized token map as the T2T module makes one: (B, C, H, W) with channels last in memory."""
    tokens = torch.randn(batch, height * width, channels, dtype=torch.float64)
    return tokens.transpose(1, 2).reshape(batch, channels, height, width)


@pytest.mark.parametrize('geometry', GEOMETRIES)
@pytest.mark.parametrize('token_map', [False, True], ids=['image', 'token_map'])
@pytest.mark.parametrize('size', [(13, 11), (8, 21)])
def test_soft_split_adjoint_is_the_gradient_of_the_soft_split(geometry, token_map, size):
    torch.manual_seed(0)
    x = _token_map(2, 5, *size) if token_map else torch.randn(2, 5, *size, dtype=torch.float64)
    x.requires_grad_(True)
    tokens = soft_split(x, *geometry, token_map=token_map)
    grad = torch.randn_like(tokens)
    expected, = torch.autograd.grad(tokens, x, grad)
    adjoint = soft_split_adjoint(grad, size, *geometry, token_map=token_map)
    assert adjoint.shape == x.shape
    torch.testing.assert_close(adjoint, expected, rtol=0, atol=1e-12)


def test_eager_soft_split_runs_the_operator_and_traced_graphs_the_plain_ops():
    split = SoftSplit(3, 2, 1, token_map=True)
    x = _token_map(1, 4, 9, 7).float().requires_grad_(True)
    assert 'timm_t2t_soft_split' in type(split(x).grad_fn).__name__
    assert 'timm_t2t_soft_split' not in type(_plain(split, x).grad_fn).__name__
    traced = torch.jit.trace(split, x.detach())
    assert not [node for node in traced.inlined_graph.nodes() if node.kind().startswith('timm_t2t::')]
    torch.testing.assert_close(traced(x.detach()), split(x.detach()), rtol=0, atol=0)


def _loss_and_grads(module: torch.nn.Module, x: torch.Tensor):
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = module(x)
    tokens, maps = out if isinstance(out, tuple) else (out, [])
    loss = tokens.square().sum() + sum(m.sum() for m in maps)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return tokens.detach(), [m.detach() for m in maps], x.grad, grads


def _assert_round_off(fast: torch.Tensor, plain: torch.Tensor, name: str) -> None:
    """Equal to float32 round-off: each entry within 1e-6 of the largest (gradients sum many terms, in another
    order on the two paths)."""
    scale = plain.abs().max().item()
    assert (fast - plain).abs().max().item() <= 1e-6 * scale, name


def _assert_paths_agree(module: torch.nn.Module, x: torch.Tensor) -> None:
    tokens, maps, x_grad, grads = _loss_and_grads(module, x)
    plain_tokens, plain_maps, plain_x_grad, plain_grads = _plain(_loss_and_grads, module, x)
    torch.testing.assert_close(tokens, plain_tokens, rtol=0, atol=0)  # the same ops forward
    for fast, plain in zip(maps, plain_maps):
        torch.testing.assert_close(fast, plain, rtol=0, atol=0)
    _assert_round_off(x_grad, plain_x_grad, 'input')
    assert grads.keys() == plain_grads.keys() and grads
    for name in grads:
        _assert_round_off(grads[name], plain_grads[name], name)


@pytest.mark.parametrize('t2t_layer', ['performer', 'transformer'])
@pytest.mark.parametrize('size', [(64, 64), (61, 45)], ids=['square', 'odd-non-square'])
@pytest.mark.parametrize('soft_splits', [DEFAULT_SOFT_SPLITS, ((5, 2, 2), (3, 2, 1), (2, 2, 0))],
                         ids=['default', 'other'])
def test_module_fast_path_equals_the_plain_path(t2t_layer, size, soft_splits):
    torch.manual_seed(0)
    module = TokensToToken(in_chans=3, embed_dim=32, token_dim=16, t2t_layer=t2t_layer, soft_splits=soft_splits)
    module.eval()  # no dropout: both paths see the same computation
    _assert_paths_agree(module, torch.randn(2, 3, *size))


def test_model_with_dynamic_size_equals_the_plain_path():
    torch.manual_seed(0)
    model = timm.create_model('t2t_vit_7', img_size=64, num_classes=5, dynamic_img_size=True).eval()
    for size in ((64, 64), (57, 83)):
        _assert_paths_agree(model, torch.randn(2, 3, *size))


class TokensOnly(torch.nn.Module):
    def __init__(self, module: TokensToToken) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.forward_tokens(x)


def _forward_calls(module: torch.nn.Module):
    calls = []
    module.register_forward_hook(lambda m, inputs, output: calls.append(inputs[0].shape[0]))
    return calls


def test_eager_tokens_come_in_batch_slices_of_the_whole_batchs_tokens(monkeypatch):
    torch.manual_seed(0)
    module = TokensToToken(in_chans=3, embed_dim=32, token_dim=16).eval()
    x = torch.randn(5, 3, 64, 64)  # 256 first-layer tokens an image
    whole, _, whole_x_grad, whole_grads = _loss_and_grads(TokensOnly(module), x)
    monkeypatch.setattr(tokens_to_token, 'SLICE_TOKENS', 2 * 256)
    calls = _forward_calls(module)
    sliced, _, sliced_x_grad, sliced_grads = _loss_and_grads(TokensOnly(module), x)
    assert calls == [2, 2, 1]
    _assert_round_off(sliced, whole, 'tokens')
    _assert_round_off(sliced_x_grad, whole_x_grad, 'input')
    assert sliced_grads.keys() == whole_grads.keys()
    for name in whole_grads:
        _assert_round_off(sliced_grads[name], whole_grads[name], name)


def test_slices_hold_four_images_at_224_and_models_take_them():
    model = timm.create_model('t2t_vit_7', num_classes=3, dynamic_img_size=True).eval()
    calls = _forward_calls(model.tokens_to_token)
    with torch.no_grad():
        model(torch.randn(6, 3, 224, 224))
        model(torch.randn(2, 3, 448, 448))  # 12,544 first-layer tokens an image: one at a time
    assert calls == [4, 2, 1, 1]
    scripted = torch.jit.script(timm.create_model('t2t_vit_7', img_size=64).eval())
    torch.testing.assert_close(scripted(torch.randn(3, 3, 64, 64)).shape, torch.Size([3, 1000]))
