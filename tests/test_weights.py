"""Weights to a model (timm_t2t.weights): checkpoints and folders load as classify, features and convert take them,
the names users import from predict and features still work, and the module depends on none of its users."""
import pytest
import timm
import torch

from timm_t2t import features, predict, weights
from timm_t2t.weights import load_model

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
