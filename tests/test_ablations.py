"""The paper's ablation models as T2TViT options: structure, the main family's features, and clear limits.

Their reference parity (SE, Dense, Ghost against logits from the reference's own classes) runs with the main
family's in test_parity.py.
"""
import copy

import pytest
import timm
import torch

from timm_t2t import ConvTokenizer, T2TViT
from timm_t2t.blocks import DenseBlock, GhostAttention, GhostMlp, SqueezeExciteAttention, Transition

from parity_cases import ABLATION_CASES, load_parity_case

# The registered ablations made small: (entry point, architecture keyword arguments).
SMALL_ABLATIONS = {
    't2t_vit_14_se': dict(embed_dim=64, depth=2, num_heads=2),
    't2t_vit_dense': dict(embed_dim=32, depth=(2, 1), growth_rate=16, num_heads=2),
    't2t_vit_16_ghost': dict(embed_dim=64, depth=2, num_heads=2),
    't2t_vit_14_wo_t2t': dict(embed_dim=64, depth=2, num_heads=2),
    't2t_vit_c_14': dict(embed_dim=64, depth=2, num_heads=2),
    't2t_vit_d768_4': dict(embed_dim=64, depth=2, num_heads=2),
}


def _small(name: str, **kwargs) -> T2TViT:
    torch.manual_seed(0)
    return timm.create_model(name, img_size=64, token_dim=16, num_classes=5, **SMALL_ABLATIONS[name], **kwargs).eval()


def test_entry_points_build_the_papers_architectures():
    se = timm.create_model('t2t_vit_14_se')
    assert all(isinstance(b.attn, SqueezeExciteAttention) for b in se.blocks) and len(se.blocks) == 14
    assert se.blocks[0].attn.se.fc1.weight.shape == (384 // 16, 384) and se.blocks[0].attn.se.fc1.bias is None

    ghost = timm.create_model('t2t_vit_16_ghost')
    assert len(ghost.blocks) == 16
    assert isinstance(ghost.blocks[0].attn, GhostAttention) and isinstance(ghost.blocks[0].mlp, GhostMlp)
    assert ghost.blocks[0].attn.q.weight.shape == (192, 384) and ghost.blocks[0].mlp.fc2.weight.shape == (384, 1152)

    dense = timm.create_model('t2t_vit_dense')
    kinds = ''.join('T' if isinstance(b, Transition) else 'D' for b in dense.blocks)
    assert kinds == 'DDDTDDDDDDTDDDDDDTDDDD'  # stages of 3, 6, 6 and 4 blocks
    assert [f['num_chs'] for f in dense.feature_info[2:5]] == [192, 256, 320]  # +64 per block
    assert dense.feature_info[5]['num_chs'] == 160  # the transition halves the width
    assert dense.num_features == 584 and dense.head.in_features == 584 and dense.norm.normalized_shape == (584,)

    wo_t2t = timm.create_model('t2t_vit_14_wo_t2t')
    assert isinstance(wo_t2t.tokens_to_token, ConvTokenizer) and len(wo_t2t.tokens_to_token.convs) == 1
    assert wo_t2t.tokens_to_token.convs[0].kernel_size == (16, 16) and wo_t2t.grid_size == (14, 14)

    conv = timm.create_model('t2t_vit_c_14')
    assert [(c.kernel_size[0], c.stride[0]) for c in conv.tokens_to_token.convs] == [(7, 4), (3, 2), (3, 2)]
    assert [c.out_channels for c in conv.tokens_to_token.convs] == [64, 64, 384]

    shallow = timm.create_model('t2t_vit_d768_4')
    assert (shallow.embed_dim, len(shallow.blocks), shallow.blocks[0].attn.num_heads) == (768, 4, 12)
    assert sum(p.numel() for p in shallow.parameters()) == sum(
        p.numel() for p in timm.create_model('t2t_vit_14_wide').parameters())


@pytest.mark.parametrize('name', ABLATION_CASES)
def test_reference_key_names_load_into_the_entry_point(name):
    """Every key of the reference's checkpoint has a place in the model, and nothing is left over."""
    case = load_parity_case(name)
    model = timm.create_model(case.entry_point, **case.architecture)
    model.load_state_dict(case.checkpoint['state_dict'], strict=True)


@pytest.mark.parametrize('name', sorted(SMALL_ABLATIONS))
def test_any_size_gradients_and_checkpointing(name):
    model = _small(name, dynamic_img_size=True).train()
    x = torch.randn(2, 3, 48, 80)
    torch.manual_seed(1)  # the Performer layers' fixed dropout draws the same masks in both runs
    model(x).square().mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]

    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    model(x).square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize('name', sorted(SMALL_ABLATIONS))
def test_torchscript_matches_eager(name):
    model = _small(name)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', sorted(SMALL_ABLATIONS))
def test_fused_and_eager_attention_agree(name):
    fused = _small(name)
    timm.layers.set_fused_attn(False)
    try:
        eager = _small(name)
    finally:
        timm.layers.set_fused_attn(True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), eager(x), rtol=0, atol=1e-5)


def test_dense_features_follow_the_widths():
    model = _small('t2t_vit_dense')  # stages (2, 1) from width 32, growth 16: 48, 64 | transition 32 | 48
    assert [f['num_chs'] for f in model.feature_info] == [16, 16, 48, 64, 32, 48]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        assert [m.shape[1] for m in maps] == [16, 16, 48, 64, 32, 48]
        normed = model.forward_intermediates(x, indices=[-1], norm=True, output_fmt='NLC', intermediates_only=True)
        torch.testing.assert_close(normed[0], model.forward_features(x)[:, 1:])

    features = timm.create_model('t2t_vit_dense', features_only=True, img_size=64, token_dim=16,
                                 **SMALL_ABLATIONS['t2t_vit_dense'])
    assert features.feature_info.channels() == [16, 16, 48] and features.feature_info.reduction() == [4, 8, 16]

    pruned = copy.deepcopy(model)
    pruned.prune_intermediate_layers([3])  # to the second block, 64 wide: the final norm (48) cannot follow
    assert pruned.num_features == 64 and isinstance(pruned.norm, torch.nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(pruned.forward_features(x)[:, 1:].transpose(1, 2).reshape(1, 64, 4, 4), maps[3])


def test_convolutional_stems_give_their_pyramids():
    conv = timm.create_model('t2t_vit_c_14', features_only=True, img_size=96, **SMALL_ABLATIONS['t2t_vit_c_14'])
    assert conv.feature_info.reduction() == [4, 8, 16] and conv.feature_info.channels() == [64, 64, 64]
    assert [tuple(m.shape[-2:]) for m in conv(torch.randn(1, 3, 96, 96))] == [(24, 24), (12, 12), (6, 6)]

    patch = timm.create_model('t2t_vit_14_wo_t2t', features_only=True, img_size=96,
                              **SMALL_ABLATIONS['t2t_vit_14_wo_t2t'])
    assert patch.feature_info.reduction() == [16]  # a hard split has no finer maps
    assert [tuple(m.shape) for m in patch(torch.randn(1, 3, 96, 96))] == [(1, 64, 6, 6)]


def test_conv_stem_adapts_channels_like_timm_first_convs(tmp_path):
    rgb = _small('t2t_vit_c_14')
    path = tmp_path / 'rgb.pth'
    torch.save(rgb.state_dict(), path)
    overlay = dict(file=str(path), num_classes=5, input_size=(3, 64, 64))
    gray = _small('t2t_vit_c_14', in_chans=1, pretrained=True, pretrained_cfg_overlay=overlay)
    expected = rgb.tokens_to_token.convs[0].weight.sum(dim=1, keepdim=True)  # as timm adapts a first conv
    torch.testing.assert_close(gray.tokens_to_token.convs[0].weight, expected)
    torch.testing.assert_close(gray.blocks[1].mlp.fc2.weight, rgb.blocks[1].mlp.fc2.weight)


@pytest.mark.parametrize('kwargs, message', [
    (dict(embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.), r'GhostMlp widens by exactly 3 \(mlp_ratio=3\)'),
    (dict(embed_dim=60, depth=2, num_heads=8), 'not divisible by num_heads=8'),
    (dict(embed_dim=63, depth=2, num_heads=3), 'GhostAttention needs an even width'),
])
def test_ghost_limits_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model('t2t_vit_16_ghost', **kwargs)


@pytest.mark.parametrize('kwargs, message', [
    (dict(growth_rate=16), r'takes depth as blocks per stage'),
    (dict(depth=(2, 2)), 'depth must be an int unless growth_rate is set'),
    (dict(depth=(2, 2), growth_rate=16), 'needs block_fn=DenseBlock'),
    (dict(t2t_layer='convolution', soft_splits=()), 'soft_splits must hold one or more'),
])
def test_backbone_options_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        T2TViT(**{**dict(img_size=64, embed_dim=32, depth=2, num_heads=2), **kwargs})


def test_dense_block_factory_is_a_block():
    block = DenseBlock(dim=32, num_heads=2, growth_rate=8, attn_layer=SqueezeExciteAttention)
    out = block(torch.randn(2, 5, 32))
    assert out.shape == (2, 5, 40)
    assert isinstance(block.attn, SqueezeExciteAttention)
