"""Weights to a model (timm_t2t.weights): checkpoints and folders load as classify, features and convert take them,
what a training checkpoint records of its preprocessing is read, the names users import from predict and features
still work, and the module depends on none of its users."""
import argparse

import pytest
import timm
import torch
from safetensors.torch import save_file

from timm_t2t import features, predict, weights
from timm_t2t.weights import load_model, training_data_config

from fresh_python import run_python


def test_a_timm_checkpoint_of_another_model_loads_with_its_class_count(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=5).eval()
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'resnet.pth')
    loaded = load_model('test_resnet', tmp_path / 'resnet.pth')
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(RuntimeError) as error:
        load_model('test_vit', tmp_path / 'resnet.pth')
    assert str(error.value).startswith(f'{tmp_path / "resnet.pth"} does not fit test_vit (a checkpoint of another '
                                       f'configuration needs a model folder, which names its arguments): ')


def test_the_preprocessing_a_training_checkpoint_records(tmp_path):
    """timm's train.py arguments as its CheckpointSaver stores them: the settings given, not those left to the model
    (None, or '' for the interpolation); nothing from a file without them."""
    weights_only = {'head.weight': torch.zeros(2, 2)}
    cases = [
        (dict(model='t2t_vit_7', mean=[0.5, 0.5, 0.5], std=None, crop_pct=1.0, interpolation=''),
         dict(mean=(0.5, 0.5, 0.5), crop_pct=1.0)),
        (dict(model='t2t_vit_7', mean=None, std=None, crop_pct=None, interpolation='bilinear'),
         dict(interpolation='bilinear')),
        (dict(model='t2t_vit_7', mean=None, std=None, crop_pct=None, interpolation=''), {}),  # the model's own
        (dict(model='t2t_vit_7', img_size=64, epochs=6), None),  # another script's arguments: nothing recorded
    ]
    for args, recorded in cases:
        torch.save({'state_dict': weights_only, 'args': argparse.Namespace(**args)}, tmp_path / 'last.pth.tar')
        assert training_data_config(tmp_path / 'last.pth.tar') == recorded, args
    torch.save({'state_dict': weights_only}, tmp_path / 'plain.pth')
    save_file(weights_only, str(tmp_path / 'model.safetensors'))
    assert training_data_config(tmp_path / 'plain.pth') is None
    assert training_data_config(tmp_path / 'model.safetensors') is None


def test_the_public_names_of_predict_and_features_are_those_of_weights():
    for name in ('load_classifier', 'infer_variant', 'DataConfigError'):
        assert name in predict.__all__ and getattr(predict, name) is getattr(weights, name)
    assert 'load_model' in features.__all__ and features.load_model is weights.load_model


def test_weights_depends_on_none_of_its_users():
    code = ('import json, sys\nimport timm_t2t.weights\n'
            'print(json.dumps(sorted(m for m in sys.modules if m.startswith("timm_t2t."))))')
    loaded = run_python(code)
    assert 'timm_t2t.weights' in loaded
    assert not {'timm_t2t.predict', 'timm_t2t.features', 'timm_t2t.convert', 'timm_t2t.cli'} & set(loaded), loaded
