"""torch.compile without graph breaks, TorchScript and ONNX export, each matching the eager model."""
import numpy as np
import onnxruntime
import pytest
import timm
import torch


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_compiles_as_one_graph(small_model, mode):
    getattr(small_model, mode)()
    explanation = torch._dynamo.explain(small_model)(torch.randn(2, 3, 64, 64))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_inductor_compile_matches_eager(small_model):
    compiled = torch.compile(small_model, fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), small_model(x), rtol=0, atol=1e-4)


def test_compiled_training_step_matches_eager(make_small_model):
    eager, compiled_model = make_small_model(), make_small_model()
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model.train(), fullgraph=True)
    eager.train()
    x = torch.randn(2, 3, 64, 64)
    with torch._inductor.config.patch(fallback_random=True):  # eager's RNG: the same dropout masks
        for model in (eager, compiled):
            torch.manual_seed(3)
            model(x).square().mean().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_torchscript_of_a_registered_model():
    model = timm.create_model('t2t_vit_t_14', img_size=64, scriptable=True).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=1e-4)


def test_onnx_export_matches_eager(small_model, tmp_path):
    path = tmp_path / 'model.onnx'
    x = torch.randn(2, 3, 64, 64)
    batch = torch.export.Dim('batch', min=1, max=64)
    torch.onnx.export(small_model, (x,), str(path), dynamo=True, dynamic_shapes={'x': {0: batch}})
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for inputs in (x, torch.randn(5, 3, 64, 64)):  # the batch size stays free
        (out,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(out, small_model(inputs).numpy(), rtol=0, atol=1e-4)
