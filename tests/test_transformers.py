"""A converted folder, and the same folder on the Hub, through transformers' timm wrapper in fresh interpreters that
import only transformers (the .pth hook registers the models when the wrapper imports timm). No mocks."""
import importlib.util
import json

import pytest
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo

from benchmarks.reference_t2t import ReferenceT2TViT, training_checkpoint
from fresh_python import run_python
from test_hub import TINY, _inputs, _load, env, hub  # noqa: F401  (env and hub are fixtures)
from timm_t2t._compat import create_model_from_folder
from timm_t2t.convert import convert_checkpoint

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec('transformers') is None,
    reason='transformers is not installed (the test extra installs it; the oldest-timm CI environment does not)')

SIZE = 64  # the converted model's input size, not the variant's 224: transformers must build it from model_args
REPO = 'someone/t2t-tiny'

TRANSFORMERS = '''
import json, sys, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
torch.manual_seed(0)
x = torch.randn(1, 3, {size}, {size})
model = AutoModelForImageClassification.from_pretrained({source!r}).eval()
with torch.no_grad():
    logits = model(pixel_values=x).logits[0]
processor = AutoImageProcessor.from_pretrained({source!r})
pixels = processor(Image.open({image!r}).convert('RGB'), return_tensors='pt')['pixel_values']
top = pipeline('image-classification', model={source!r})({image!r}, top_k=1)[0]
print(json.dumps(dict(
    logits=logits.tolist(), pixels=pixels.tolist(), top=top, wrapped=type(model.timm_model).__name__,
    num_labels=model.config.num_labels, plugin='timm_t2t.t2t_vit' in sys.modules)))
'''


@pytest.fixture
def converted(tmp_path):
    """A small T2T-ViT-7 (1000 classes, 64 x 64 input) in the reference format, converted by timm-t2t."""
    torch.manual_seed(3)
    reference = ReferenceT2TViT(tokens_type='performer', img_size=SIZE, **TINY)
    torch.save(training_checkpoint(reference.state_dict()), tmp_path / 'checkpoint.pth.tar')
    folder, _ = convert_checkpoint(tmp_path / 'checkpoint.pth.tar', tmp_path / 'converted', 't2t_vit_7', TINY)
    return folder


@pytest.fixture
def image(tmp_path):
    path = tmp_path / 'image.png'
    pixels = torch.randint(0, 256, (80, 96, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    return path


def _timm_results(folder, image):
    """What timm gives for the folder: logits on `_inputs`, the preprocessed image, and its top class."""
    model = create_model_from_folder(folder).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    pixels = transform(Image.open(image).convert('RGB')).unsqueeze(0)
    with torch.no_grad():
        probs = model(pixels)[0].softmax(-1)
        logits = model(_inputs(size=SIZE))[0]
    return logits, pixels, probs


def _transformers(source, image, env=None):
    return run_python(TRANSFORMERS.format(source=str(source), image=str(image), size=SIZE), env)


def _assert_same_as_timm(result, folder, image):
    logits, pixels, probs = _timm_results(folder, image)
    assert result['wrapped'] == 'T2TViT' and result['plugin'] and result['num_labels'] == 1000
    torch.testing.assert_close(torch.tensor(result['logits']), logits, rtol=0, atol=1e-6)
    assert torch.equal(torch.tensor(result['pixels']), pixels)  # timm's own eval transform, from config.json
    label = probs.argmax().item()
    assert result['top']['label'] == ImageNetInfo().index_to_description(label)
    assert result['top']['score'] == pytest.approx(probs[label].item(), abs=1e-6)


def test_converted_folder_loads_in_transformers(converted, image):
    _assert_same_as_timm(_transformers(converted, image), converted, image)


def test_converted_folder_loads_from_the_hub_in_transformers(converted, image, hub, env):
    hub.add_folder(REPO, converted)
    result = _transformers(REPO, image, env)
    assert hub.requests_to(f'/{REPO}/resolve/main/model.safetensors')
    _assert_same_as_timm(result, converted, image)
    timm_hub = _load(env, name=f'hf-hub:{REPO}', size=SIZE)
    assert 'error' not in timm_hub, timm_hub
    torch.testing.assert_close(torch.tensor(result['logits']), torch.tensor(timm_hub['logits']), rtol=0, atol=1e-6)


def test_converted_config_gives_the_class_count_once_and_the_input_size(converted):
    """transformers passes the config's num_classes and model_args to timm together, and preprocesses images by the
    pretrained cfg."""
    config = json.loads((converted / 'config.json').read_text())
    assert config['num_classes'] == config['pretrained_cfg']['num_classes'] == 1000
    assert 'num_classes' not in config['model_args']
    assert config['model_args']['embed_dim'] == TINY['embed_dim'] and config['model_args']['img_size'] in (
        SIZE, [SIZE, SIZE])
    assert config['pretrained_cfg']['input_size'] == [3, SIZE, SIZE]
