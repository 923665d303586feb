"""T2TPatchEmbed: the Tokens-to-Token module as the stem of timm's ViTs, through timm's own ViT code."""
import functools

import pytest
import timm
import torch
from timm.layers import PatchEmbed

from timm_t2t import T2TPatchEmbed, T2TViT

from parity_cases import load_parity_case

# timm's stride-16 ViTs, made small: (name, keyword arguments)
VITS = [
    ('vit_small_patch16_224', dict(depth=2)),
    ('deit_tiny_patch16_224', dict(depth=2)),
    ('vit_little_patch16_reg1_gap_256', dict(depth=2)),
]


def _vit(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    stem = functools.partial(T2TPatchEmbed, token_dim=16)
    return timm.create_model(name, embed_layer=stem, img_size=64, num_classes=4, **kwargs)


@pytest.mark.parametrize('output_fmt', [None, 'NCHW', 'NHWC'])
def test_patch_embed_interface_as_timm_calls_it(output_fmt):
    kwargs = dict(img_size=(64, 96), patch_size=16, in_chans=3, embed_dim=32, bias=True, dynamic_img_pad=False)
    if output_fmt:
        kwargs.update(output_fmt=output_fmt, strict_img_size=False)
    stem, reference = T2TPatchEmbed(**kwargs), PatchEmbed(**kwargs)
    assert stem.grid_size == reference.grid_size == (4, 6) and stem.num_patches == reference.num_patches == 24
    assert stem.feat_ratio() == reference.feat_ratio() == 16
    assert stem.feat_ratio(as_scalar=False) == reference.feat_ratio(as_scalar=False) == (16, 16)
    assert stem.dynamic_feat_size((128, 80)) == reference.dynamic_feat_size((128, 80)) == (8, 5)
    x = torch.randn(2, 3, 64, 96)
    assert stem(x).shape == reference(x).shape
    stem.set_input_size((96, 96))
    reference.set_input_size((96, 96))
    assert stem.grid_size == reference.grid_size and stem.num_patches == reference.num_patches == 36


def test_output_formats_hold_the_same_tokens():
    torch.manual_seed(0)
    tokens = T2TPatchEmbed(img_size=64, embed_dim=32, token_dim=8)
    nhwc = T2TPatchEmbed(img_size=64, embed_dim=32, token_dim=8, output_fmt='NHWC', strict_img_size=False)
    nchw = T2TPatchEmbed(img_size=64, embed_dim=32, token_dim=8, flatten=False)
    nhwc.load_state_dict(tokens.state_dict())
    nchw.load_state_dict(tokens.state_dict())
    for stem in (tokens, nhwc, nchw):
        stem.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        flat = tokens(x)
        torch.testing.assert_close(nhwc(x).flatten(1, 2), flat)
        torch.testing.assert_close(nchw(x).flatten(2).transpose(1, 2), flat)


def test_dynamic_img_pad_pads_to_the_stride():
    stem = T2TPatchEmbed(img_size=None, embed_dim=32, token_dim=8, dynamic_img_pad=True, flatten=False)
    assert stem.dynamic_feat_size((50, 70)) == (4, 5)  # ceil(50 / 16), ceil(70 / 16), as PatchEmbed
    assert stem(torch.randn(1, 3, 50, 70)).shape == (1, 32, 4, 5)
    unpadded = T2TPatchEmbed(img_size=None, embed_dim=32, token_dim=8, flatten=False)
    # without padding the soft splits set the grid: 50 -> 12 -> 6 -> 3 rows, 70 -> 17 -> 9 -> 5 columns
    assert unpadded(torch.randn(1, 3, 50, 70)).shape[-2:] == unpadded.dynamic_feat_size((50, 70)) == (3, 5)


@pytest.mark.parametrize('name, kwargs', VITS, ids=[v[0] for v in VITS])
def test_timm_vits_train_with_the_stem(name, kwargs):
    model = _vit(name, **kwargs)
    assert isinstance(model.patch_embed, T2TPatchEmbed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, target = torch.randn(8, 3, 64, 64), torch.randint(0, 4, (8,))
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        stem_grads = [p.grad for p in model.patch_embed.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in stem_grads)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize('name, kwargs', VITS, ids=[v[0] for v in VITS])
def test_features_only_any_size_and_checkpointing(name, kwargs):
    features = _vit(name, features_only=True, out_indices=(-1,), **kwargs).eval()
    assert features.feature_info.reduction() == [16]
    assert [m.shape[-2:] for m in features(torch.randn(1, 3, 64, 64))] == [(4, 4)]

    dynamic = _vit(name, dynamic_img_size=True, **kwargs).eval()
    with torch.no_grad():
        assert dynamic(torch.randn(1, 3, 48, 96)).shape == (1, 4)
        maps = dynamic.forward_intermediates(torch.randn(1, 3, 48, 96), intermediates_only=True)
    assert maps[-1].shape[-2:] == (3, 6)

    model = _vit(name, **kwargs).train()
    model.set_grad_checkpointing(True)
    assert model.patch_embed.tokens_to_token.attention1.grad_checkpointing
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    model.set_input_size(img_size=(96, 64))
    assert model.patch_embed.grid_size == (6, 4) and model(torch.randn(1, 3, 96, 64)).shape == (1, 4)


def test_loads_the_tokenizer_of_a_reference_checkpoint():
    """The stem of a ViT takes the T2T module of a T2T-ViT checkpoint and makes the same tokens from an image."""
    case = load_parity_case('small_performer_64')  # token_dim 16, embed_dim 64, reference format, EMA inside
    t2t_vit = T2TViT(**case.model_kwargs).eval()
    t2t_vit.load_state_dict(case.checkpoint['state_dict_ema'])
    vit = _vit('vit_small_patch16_224', embed_dim=64, num_heads=2, depth=1).eval()
    assert vit.patch_embed.load_tokens_to_token(case.checkpoint_path) == []
    with torch.no_grad():
        torch.testing.assert_close(vit.patch_embed(case.inputs), t2t_vit.tokens_to_token(case.inputs)[0])

    vit.patch_embed.load_tokens_to_token(case.checkpoint, use_ema=False)
    t2t_vit.load_state_dict(case.checkpoint['state_dict'])
    with torch.no_grad():
        torch.testing.assert_close(vit.patch_embed(case.inputs), t2t_vit.tokens_to_token(case.inputs)[0])


def test_loads_a_timm_format_tokenizer_into_one_channel():
    torch.manual_seed(0)
    source = timm.create_model('t2t_vit_7', img_size=64, token_dim=16, embed_dim=64, depth=1)
    vit = _vit('vit_small_patch16_224', embed_dim=64, num_heads=2, depth=1, in_chans=1)
    vit.patch_embed.load_tokens_to_token(source.state_dict())
    source_weight = source.tokens_to_token.attention1.attn.qkv.weight.reshape(48, 3, 49)
    torch.testing.assert_close(vit.patch_embed.tokens_to_token.attention1.attn.qkv.weight,
                               source_weight.sum(dim=1))  # adapted as timm adapts first convs


def test_tokenizer_that_does_not_fit_is_named():
    source = timm.create_model('t2t_vit_7', img_size=64, token_dim=16, embed_dim=64, depth=1).state_dict()
    vit = _vit('deit_tiny_patch16_224', depth=1)  # 192 wide: the projection cannot load
    with pytest.raises(ValueError, match=r'does not fit this T2TPatchEmbed: 2 keys of another shape .*'
                                         r'tokens_to_token\.project\.weight \(64, 144\) vs \(192, 144\)'):
        vit.patch_embed.load_tokens_to_token(source)
    skipped = vit.patch_embed.load_tokens_to_token(source, strict=False)
    assert skipped == ['tokens_to_token.project.weight', 'tokens_to_token.project.bias']
    torch.testing.assert_close(vit.patch_embed.tokens_to_token.attention2.mlp.fc1.weight,
                               source['tokens_to_token.attention2.mlp.fc1.weight'])
    with pytest.raises(ValueError, match='holds no T2T-ViT tokenizer weights'):
        vit.patch_embed.load_tokens_to_token(timm.create_model('deit_tiny_patch16_224', depth=1).state_dict())


@pytest.mark.parametrize('kwargs, message', [
    (dict(patch_size=14), r'has stride 16 \(its soft splits\).*got patch_size=14'),
    (dict(output_fmt='NLC'), "output_fmt must be 'NCHW' or 'NHWC'"),
    (dict(img_size=2), 'too small for the soft splits'),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        T2TPatchEmbed(**kwargs)


def test_wrong_input_is_a_clear_error():
    vit = _vit('vit_small_patch16_224', depth=1)
    with pytest.raises(ValueError, match=r'Input size \(96x64\) does not match the model img_size \(64x64\)'):
        vit(torch.randn(1, 3, 96, 64))
    with pytest.raises(ValueError, match=r'Expected a batch of images \(B, 3, H, W\), got a tensor of shape '
                                         r'\(3, 64, 64\): add the batch dimension'):
        vit(torch.randn(3, 64, 64))


def test_torchscript_of_a_vit_with_the_stem():
    vit = _vit('vit_small_patch16_224', depth=1).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(vit)(x), vit(x), rtol=1e-5, atol=1e-5)


def test_t2t_vit_without_t2t_is_the_same_backbone():
    """The paper's mirror image: T2T-ViT-14 over a hard split has T2T-ViT-14's backbone, and a ViT with this stem
    has T2T-ViT-14's tokenizer."""
    with_t2t, without = timm.create_model('t2t_vit_14'), timm.create_model('t2t_vit_14_wo_t2t')
    backbone = lambda m: {k: v.shape for k, v in m.state_dict().items() if not k.startswith('tokens_to_token.')}
    assert backbone(with_t2t) == backbone(without)
    vit = timm.create_model('vit_small_patch16_224', embed_layer=T2TPatchEmbed)
    stem = {k: v.shape for k, v in with_t2t.state_dict().items() if k.startswith('tokens_to_token.')}
    assert {k[len('patch_embed.'):]: v.shape for k, v in vit.state_dict().items() if k.startswith('patch_embed.')} \
        == stem
