"""The model as a timm user drives it: sizes, pooling, heads, features, pruning, checkpointing, TorchScript."""
import copy

import pytest
import timm
import torch
try:
    from timm.optim import param_groups_layer_decay
except ImportError:  # older timm (1.0.9) exports it only from optim_factory
    from timm.optim.optim_factory import param_groups_layer_decay

from timm_t2t import T2TViT

from conftest import SMALL


def _grads(model: torch.nn.Module, x: torch.Tensor):
    model.zero_grad()
    model(x).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize('img_size', [(64, 64), (48, 80), (80, 32)])
@pytest.mark.parametrize('in_chans', [1, 3, 4])
def test_any_size_and_channels(make_small_model, img_size, in_chans):
    model = make_small_model(img_size=img_size, in_chans=in_chans)
    assert model.grid_size == (img_size[0] // 16, img_size[1] // 16)
    assert model.pos_embed.shape == (1, 1 + img_size[0] * img_size[1] // 256, SMALL['embed_dim'])
    out = model(torch.randn(1, in_chans, *img_size))  # batch size 1
    assert out.shape == (1, SMALL['num_classes']) and out.isfinite().all()


def test_wrong_size_is_a_clear_error(small_model):
    with pytest.raises(ValueError, match=r'Input size \(96x64\) does not match the model img_size \(64x64\)'):
        small_model(torch.randn(1, 3, 96, 64))


def test_dynamic_img_size(make_small_model):
    static = make_small_model()
    dynamic = make_small_model(dynamic_img_size=True)
    dynamic.load_state_dict(static.state_dict())
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(dynamic(x), static(x), rtol=0, atol=0)  # at its own size: the same model
        for size in [(96, 64), (32, 128), (72, 56), (50, 70)]:  # multiples of 16 or not
            out = dynamic(torch.randn(2, 3, *size))
            assert out.shape == (2, SMALL['num_classes']) and out.isfinite().all()
        features = dynamic.forward_features(torch.randn(1, 3, 96, 128))
    assert features.shape == (1, 1 + 6 * 8, SMALL['embed_dim'])


@pytest.mark.parametrize('kwargs, message', [
    (dict(t2t_layer='linformer'), "Unknown T2T layer 'linformer'"),
    (dict(global_pool='map'), "Unknown global_pool 'map'"),
    (dict(soft_splits=((7, 4, 2), (3, 2, 1))), 'soft_splits must hold three'),
    (dict(img_size=(224, 224, 3)), 'img_size must be an int or'),
    (dict(img_size=2), 'too small for the soft splits'),
])
def test_bad_arguments_are_clear_errors(make_small_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_small_model(**kwargs)


def test_unknown_variant_and_unknown_argument():
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('t2t_vit_15')
    with pytest.raises(TypeError, match='not_an_arg'):
        timm.create_model('t2t_vit_7', not_an_arg=1)


def test_creation_prints_nothing(capsys):
    timm.create_model('t2t_vit_7')
    timm.create_model('t2t_vit_t_14')
    assert capsys.readouterr() == ('', '')


def test_custom_soft_split_schedule(make_small_model):
    model = make_small_model(soft_splits=((4, 4, 0), (2, 2, 0), (2, 2, 0)))
    assert model.tokens_to_token.reductions == (4, 8, 16)
    assert model.tokens_to_token.attention1.norm1.normalized_shape == (3 * 4 * 4,)
    out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, SMALL['num_classes'])


def test_global_pool_and_heads(small_model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = small_model.forward_features(x)
        assert tokens.shape == (2, 17, 64)
        torch.testing.assert_close(small_model.forward_head(tokens, pre_logits=True), tokens[:, 0])
        torch.testing.assert_close(small_model(x), small_model.head(tokens[:, 0]))

        small_model.reset_classifier(5, global_pool='avg')
        assert small_model(x).shape == (2, 5)
        torch.testing.assert_close(small_model.forward_head(tokens, pre_logits=True), tokens[:, 1:].mean(1))

        small_model.reset_classifier(0)
        assert small_model.global_pool == 'avg'  # kept unless given
        torch.testing.assert_close(small_model(x), tokens[:, 1:].mean(1))

        small_model.reset_classifier(0, global_pool='')
        torch.testing.assert_close(small_model(x), tokens)
    with pytest.raises(ValueError, match="Unknown global_pool 'gem'"):
        small_model.reset_classifier(0, global_pool='gem')


def test_gradients_reach_every_parameter(small_model):
    grads = _grads(small_model.train(), torch.randn(2, 3, 64, 64))
    assert all(g.abs().sum() > 0 for g in grads.values())
    assert not any(b.requires_grad for b in small_model.buffers())  # pos_embed and Performer features are fixed


def test_grad_checkpointing_recomputes_and_gives_identical_gradients(small_model):
    small_model.train()
    x = torch.randn(2, 3, 64, 64)
    calls = []
    for layer in (small_model.tokens_to_token.attention1.attn, small_model.blocks[0]):
        layer.register_forward_pre_hook(lambda *_: calls.append(1))

    torch.manual_seed(1)  # the Performer layers' fixed dropout draws the same masks in both runs
    reference = _grads(small_model, x)
    assert len(calls) == 2
    small_model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    checkpointed = _grads(small_model, x)
    assert len(calls) == 6  # a T2T layer and a block: forward, then recomputed in backward
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=0, msg=name)


def test_torchscript_matches_eager(small_model):
    scripted = torch.jit.script(small_model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), small_model(x), rtol=1e-5, atol=1e-6)


def test_feature_pyramid_from_forward_intermediates(small_model):
    info = small_model.feature_info
    assert [f['reduction'] for f in info] == [4, 8, 16, 16]
    assert [f['num_chs'] for f in info] == [16, 16, 64, 64]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = small_model.forward_intermediates(x)
        assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 16), (2, 16, 8, 8), (2, 64, 4, 4), (2, 64, 4, 4)]
        torch.testing.assert_close(final, small_model.forward_features(x))
        # the last block's map is the final tokens before the norm, laid out as an image
        tokens = small_model.forward_intermediates(x, indices=[-1], output_fmt='NLC', intermediates_only=True)[0]
        torch.testing.assert_close(maps[-1], tokens.transpose(1, 2).reshape(2, 64, 4, 4))
        normed = small_model.forward_intermediates(x, indices=1, norm=True, output_fmt='NLC', intermediates_only=True)
        torch.testing.assert_close(normed[0], final[:, 1:])
        pairs = small_model.forward_intermediates(x, indices=[0, 3], return_prefix_tokens=True, intermediates_only=True)
        assert pairs[0][1].shape == (2, 0, 16)  # T2T maps have no class token
        torch.testing.assert_close(pairs[1][1], small_model.forward_intermediates(
            x, indices=[3], output_fmt='NLC', return_prefix_tokens=True, intermediates_only=True)[0][1])
        early = small_model.forward_intermediates(x, indices=[2], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], maps[2])


def test_features_only_is_a_stride_4_8_16_pyramid():
    model = timm.create_model('t2t_vit_7', features_only=True, img_size=96).eval()
    assert model.feature_info.reduction() == [4, 8, 16]
    assert model.feature_info.channels() == [64, 64, 256]
    maps = model(torch.randn(1, 3, 96, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 24, 24), (1, 64, 12, 12), (1, 256, 6, 6)]
    assert len(model.model.blocks) == 7  # the last block is the last feature

    model = timm.create_model('t2t_vit_7', features_only=True, out_indices=(1, 4), img_size=96)
    assert model.feature_info.reduction() == [8, 16]
    assert len(model.model.blocks) == 3  # blocks after the last feature are pruned


def test_prune_to_a_t2t_layer_leaves_no_unused_parameters(small_model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = small_model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
    pruned = copy.deepcopy(small_model).train()
    take = pruned.prune_intermediate_layers([0])
    assert take == [0] and pruned.cls_token is None and pruned.num_features == 16
    tokens = pruned.forward_features(x)
    assert tokens.shape == (2, 16 * 16, 16)
    tokens.sum().backward()
    assert not [n for n, p in pruned.named_parameters() if p.grad is None]
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval().forward_intermediates(x, indices=take, intermediates_only=True)[0],
                                   expected)
    with pytest.raises(ValueError, match='needs the class token'):
        pruned.reset_classifier(0, 'token')


def test_layer_decay_groups_follow_depth(small_model):
    groups = param_groups_layer_decay(small_model, weight_decay=0.05, layer_decay=0.75)
    scales = sorted({g['lr_scale'] for g in groups})
    assert len(scales) == SMALL['depth'] + 2  # stem (T2T module, class token), each block, final norm + head
    assert small_model.no_weight_decay() == {'cls_token'}


def test_constructor_knobs_reach_the_layers(make_small_model):
    model = make_small_model(
        drop_rate=0.25, pos_drop_rate=0.1, proj_drop_rate=0.2, attn_drop_rate=0.3, drop_path_rate=0.4,
        qkv_bias=True, token_dim=8, norm_layer='layernorm', act_layer='gelu_tanh')
    block = model.blocks[-1]
    assert model.head_drop.p == 0.25 and model.pos_drop.p == 0.1
    assert block.attn.proj_drop.p == 0.2 and block.attn.attn_drop.p == 0.3
    assert block.drop_path1.drop_prob == pytest.approx(0.4)  # stochastic depth rises to drop_path_rate
    assert block.attn.qkv.bias is not None
    assert model.tokens_to_token.project.in_features == 8 * 9
    assert block.norm1.eps == 1e-6  # timm's 'layernorm'; the default nn.LayerNorm has the reference's 1e-5
    assert isinstance(block.mlp.act, timm.layers.GELUTanh)
    assert isinstance(model.tokens_to_token.attention1.mlp.act, timm.layers.GELUTanh)


def test_fused_attention_follows_timms_switch(t2t_layer):
    timm.layers.set_fused_attn(False)
    try:
        eager = T2TViT(**{**SMALL, 't2t_layer': t2t_layer})
    finally:
        timm.layers.set_fused_attn(True)
    fused = T2TViT(**{**SMALL, 't2t_layer': t2t_layer})
    flags = lambda m: {type(a).__name__: a.fused_attn for a in m.modules() if hasattr(a, 'fused_attn')}
    assert set(flags(eager).values()) == {False} and set(flags(fused).values()) == {True}
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), eager.eval()(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize('make_input, message', [
    (lambda: torch.randn(3, 64, 64), r'Expected a batch of images \(B, 3, H, W\), got a tensor of shape \(3, 64, 64\): '
                                     r'add the batch dimension with x\.unsqueeze\(0\)\.$'),
    (lambda: torch.randn(64, 64), r'Expected a batch of images \(B, 3, H, W\), got a tensor of shape \(64, 64\)\.$'),
    (lambda: torch.randn(2, 64, 64, 3), r'Expected 3-channel images \(B, 3, H, W\), got shape \(2, 64, 64, 3\): '
                                        r'the channels look last, permute them with x\.permute\(0, 3, 1, 2\)\.$'),
    (lambda: torch.randn(2, 1, 64, 64), r'Expected 3-channel images \(B, 3, H, W\), got shape \(2, 1, 64, 64\), '
                                        r'or create the model with in_chans=1\.$'),
    (lambda: torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8),
     r'Expected a floating-point image tensor, got uint8: convert it with x\.float\(\) / 255'),
])
@pytest.mark.parametrize('entry', ['forward', 'forward_features', 'forward_intermediates'])
def test_wrong_inputs_are_one_line_errors(small_model, make_input, message, entry):
    with pytest.raises(ValueError, match=message) as error:
        getattr(small_model, entry)(make_input())
    assert '\n' not in str(error.value)


def test_wrong_inputs_are_named_in_torchscript_too(small_model):
    scripted = torch.jit.script(small_model)
    with pytest.raises(Exception, match=r'got a tensor of shape \(3, 64, 64\)'):
        scripted(torch.randn(3, 64, 64))
