"""torch.compile without graph breaks, TorchScript and ONNX export, each matching the eager model."""
import numpy as np
import onnxruntime
import pytest
import timm
import torch
import torch.nn.functional as F


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


@pytest.mark.parametrize('token_map', [False, True])
def test_soft_split_operator_is_the_soft_split_with_its_gradient(token_map):
    """Compiled graphs take the soft split as one operator: same tokens as F.unfold, the same gradient, and the
    registrations torch.library checks (fake shapes, autograd, schema)."""
    from timm_t2t.tokens_to_token import _soft_split_op, soft_split
    assert _soft_split_op is not None  # torch >= 2.4
    torch.manual_seed(0)
    x = torch.randn(2, 5, 13, 11, dtype=torch.float64)
    if token_map:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    tokens = torch.ops.timm_t2t.soft_split(x, 3, 2, 1, token_map)
    torch.testing.assert_close(tokens, F.unfold(x, 3, padding=1, stride=2).transpose(1, 2), rtol=0, atol=0)
    grad = torch.randn_like(tokens)
    expected, = torch.autograd.grad(soft_split(x, 3, 2, 1, token_map), x, grad)
    torch.testing.assert_close(torch.autograd.grad(tokens, x, grad)[0], expected, rtol=0, atol=1e-12)
    torch.library.opcheck(torch.ops.timm_t2t.soft_split.default, (x, 3, 2, 1, token_map))


def test_compiled_graph_runs_the_soft_splits_as_operators(small_model):
    graphs = []
    torch.compile(small_model, backend=lambda gm, inputs: graphs.append(gm) or gm, fullgraph=True)(
        torch.randn(2, 3, 64, 64))
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == 'call_function']
    assert sum('timm_t2t.soft_split' in t for t in targets) == 3
