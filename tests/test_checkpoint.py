"""Checkpoint conversion: positional table resampling, channel and class adaptation, clear errors."""
import pytest
import timm
import torch
import torch.nn.functional as F

from timm_t2t import T2TViT, checkpoint_filter_fn

from parity_cases import load_parity_case

CASE = 'small_performer_64'  # img_size 64: a 4x4 token grid and a class entry


def _reference_resize(pos_embed: torch.Tensor, grid) -> torch.Tensor:
    """What the reference does to load a table into another size: bicubic on the grid, class entry kept."""
    cls_entry, table = pos_embed[:, :1], pos_embed[:, 1:]
    side = int(table.shape[1] ** 0.5)
    table = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=grid, mode='bicubic', align_corners=False)
    return torch.cat([cls_entry, table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)


def _load_by_state_dict(case, **kwargs):
    model = T2TViT(**dict(case.model_kwargs, **kwargs))
    model.load_state_dict(case.checkpoint['state_dict_ema'])
    return model


def _load_by_checkpoint_path(case, **kwargs):
    return timm.create_model('t2t_vit_7', checkpoint_path=str(case.checkpoint_path), **dict(case.model_kwargs, **kwargs))


def _load_by_load_checkpoint(case, **kwargs):
    model = timm.create_model('t2t_vit_7', **dict(case.model_kwargs, **kwargs))
    timm.models.load_checkpoint(model, str(case.checkpoint_path))
    return model


def _load_by_pretrained_file(case, **kwargs):
    overlay = dict(file=str(case.checkpoint_path), num_classes=10, input_size=case.input_size)
    return timm.create_model(
        't2t_vit_7', pretrained=True, pretrained_cfg_overlay=overlay, **dict(case.model_kwargs, **kwargs))


LOADERS = [_load_by_state_dict, _load_by_checkpoint_path, _load_by_load_checkpoint, _load_by_pretrained_file]


@pytest.mark.parametrize('img_size', [96, (64, 128)], ids=['square', 'non-square'])
@pytest.mark.parametrize('loader', LOADERS, ids=lambda f: f.__name__[len('_load_by_'):])
def test_positional_table_resampled_for_another_size(loader, img_size):
    case = load_parity_case(CASE)
    model = loader(case, img_size=img_size)
    grid = model.grid_size
    assert grid == ((6, 6) if img_size == 96 else (4, 8))
    expected = _reference_resize(case.checkpoint['state_dict_ema']['module.pos_embed'], grid)
    torch.testing.assert_close(model.pos_embed, expected, rtol=0, atol=1e-6)
    out = model.eval()(torch.randn(2, 3, *model.img_size))
    assert out.shape == (2, 10) and out.isfinite().all()


def test_set_input_size_equals_building_for_that_size():
    case = load_parity_case(CASE)
    resized = _load_by_state_dict(case)
    resized.set_input_size((96, 80))
    built = _load_by_state_dict(case, img_size=(96, 80))
    torch.testing.assert_close(resized.pos_embed, built.pos_embed, rtol=0, atol=0)
    x = torch.randn(1, 3, 96, 80)
    torch.testing.assert_close(resized.eval()(x), built.eval()(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r'Input size \(64x64\) does not match the model img_size \(96x80\)'):
        resized(torch.randn(1, 3, 64, 64))


def test_cifar_finetune_format_loads():
    """The reference's CIFAR fine-tunes were saved as {'net': DataParallel state dict, 'acc', 'epoch'}."""
    case = load_parity_case(CASE)
    net = {'net': case.checkpoint['state_dict'], 'acc': 98.3, 'epoch': 59}
    model = T2TViT(**case.model_kwargs)
    model.load_state_dict(checkpoint_filter_fn(net, model))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(case.inputs), case.logits['state_dict'], rtol=0, atol=1e-5)


def test_own_state_dict_round_trips(small_model, make_small_model):
    fresh = make_small_model()
    fresh.load_state_dict(small_model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), small_model(x), rtol=0, atol=0)


def test_wrong_t2t_layer_kind_is_named_in_one_line():
    case = load_parity_case(CASE)  # performer checkpoint
    model = T2TViT(**dict(case.model_kwargs, t2t_layer='transformer'))
    with pytest.raises(RuntimeError) as error:
        model.load_state_dict(case.checkpoint['state_dict'])
    message = str(error.value)
    assert message.startswith('The checkpoint does not fit this T2TViT: the checkpoint has performer T2T layers, '
                              'the model has transformer T2T layers; ')
    assert 'keys unexpected: tokens_to_token.attention1.attn.random_features, ' in message
    assert '\n' not in message


@pytest.mark.parametrize('loader', ['load_checkpoint', 'pretrained'])
def test_mismatched_width_names_the_keys(loader):
    case = load_parity_case(CASE)
    kwargs = dict(case.model_kwargs, embed_dim=96, num_heads=2)
    if loader == 'load_checkpoint':
        model = timm.create_model('t2t_vit_7', **kwargs)
        with pytest.raises(RuntimeError) as error:
            timm.models.load_checkpoint(model, str(case.checkpoint_path))
    else:
        overlay = dict(file=str(case.checkpoint_path), num_classes=10, input_size=case.input_size)
        with pytest.raises(RuntimeError) as error:
            timm.create_model('t2t_vit_7', pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    assert 'keys of another shape (checkpoint vs model): cls_token (1, 1, 64) vs (1, 1, 96), pos_embed' in str(error.value)


def test_other_class_count_resets_head_with_pretrained():
    case = load_parity_case(CASE)
    overlay = dict(file=str(case.checkpoint_path), num_classes=10, input_size=case.input_size)
    model = timm.create_model(
        't2t_vit_7', pretrained=True, pretrained_cfg_overlay=overlay, **dict(case.model_kwargs, num_classes=3))
    assert model.head.weight.shape == (3, 64)
    loaded = case.checkpoint['state_dict_ema']
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, loaded['module.blocks.1.mlp.fc2.weight'])


@pytest.mark.parametrize('in_chans', [1, 4])
def test_first_layer_adapted_to_channels_with_pretrained(in_chans):
    case = load_parity_case(CASE)
    overlay = dict(file=str(case.checkpoint_path), num_classes=10, input_size=case.input_size)
    model = timm.create_model(
        't2t_vit_7', pretrained=True, pretrained_cfg_overlay=overlay, **dict(case.model_kwargs, in_chans=in_chans))

    source = case.checkpoint['state_dict_ema']
    k, q, v = source['module.tokens_to_token.attention1.kqv.weight'].reshape(48, 3, 7, 7).chunk(3)
    rgb = torch.cat([q, k, v])  # stored in q, k, v order
    if in_chans == 1:
        expected = rgb.sum(dim=1, keepdim=True)  # as timm adapts first convs to one channel
        norm_expected = source['module.tokens_to_token.attention1.norm1.weight'].reshape(3, 49).mean(0)
    else:
        expected = rgb.repeat(1, 2, 1, 1)[:, :4] * (3 / 4)
        norm_expected = source['module.tokens_to_token.attention1.norm1.weight'].reshape(3, 49).repeat(2, 1)[:4]
    layer = model.tokens_to_token.attention1
    torch.testing.assert_close(layer.attn.qkv.weight, expected.flatten(1))
    torch.testing.assert_close(layer.norm1.weight, norm_expected.flatten())
    out = model.eval()(torch.randn(1, in_chans, 64, 64))
    assert out.shape == (1, 10) and out.isfinite().all()
