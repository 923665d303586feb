"""The library calls that timm's train.py, validate.py and benchmark.py make, made on a T2T-ViT.

Those scripts ship in timm's repository, not in its package, so a change here could break them with no other test
noticing. These tests make the same calls with the same keyword arguments (as the scripts pass them from their
command lines) on a T2T-ViT-7 at 64 px, and check what the scripts rely on: the model built as asked, the data
config, layer-wise decay groups, EMA, the AMP scaler, the checkpoint saver, resuming, and loss that goes down.
"""
import argparse
import inspect
from pathlib import Path
from typing import Any, Dict

import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models import load_checkpoint, resume_checkpoint
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import CheckpointSaver, ModelEmaV3, NativeScaler, accuracy

from timm_t2t.recipes import bf16_is_faster, bf16_support

MODEL = 't2t_vit_7'
IMG_SIZE = 64
NUM_CLASSES = 10


def train_args(**overrides: Any) -> argparse.Namespace:
    """train.py's parsed command line, at its defaults but for a small run (`--img-size 64 --model-kwargs img_size=64`:
    the data size from the first, the model's from the second, as for timm's own ViTs)."""
    args = dict(
        model=MODEL, pretrained=False, initial_checkpoint='', num_classes=NUM_CLASSES, in_chans=None, gp=None,
        img_size=IMG_SIZE, input_size=None, crop_pct=None, mean=None, std=None, interpolation='', model_kwargs=dict(
            img_size=IMG_SIZE), drop=0., drop_path=0.1, drop_block=None, bn_momentum=None, bn_eps=None,
        torchscript=False, opt='adamw', lr=1e-3, weight_decay=0.05, momentum=0.9, layer_decay=0.65, opt_eps=None,
        opt_betas=None, sched='cosine', epochs=4, warmup_epochs=1, warmup_lr=1e-5, min_lr=1e-6, eval_metric='top1',
        sched_on_updates=True, checkpoint_hist=2)
    return argparse.Namespace(**{**args, **overrides})


def create_as_train_py(args: argparse.Namespace) -> torch.nn.Module:
    """The create_model call of train.py (in_chans as it resolves it)."""
    return timm.create_model(
        args.model, pretrained=args.pretrained, in_chans=args.in_chans or 3, num_classes=args.num_classes,
        drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block, global_pool=args.gp,
        bn_momentum=args.bn_momentum, bn_eps=args.bn_eps, scriptable=args.torchscript,
        checkpoint_path=args.initial_checkpoint, **args.model_kwargs)


def create_as_validate_py(checkpoint: str, use_ema: bool, torchscript: bool = False) -> torch.nn.Module:
    """The create_model and load_checkpoint calls of validate.py."""
    model = timm.create_model(
        MODEL, pretrained=False, num_classes=NUM_CLASSES, in_chans=3, global_pool=None, scriptable=torchscript,
        img_size=IMG_SIZE)
    load_checkpoint(model, checkpoint, use_ema)
    model.eval()
    return torch.jit.script(model) if torchscript else model


def native_scaler() -> NativeScaler:
    """timm's AMP scaler for the CPU (timm 1.0.9's takes no device and uses the CUDA scaler, disabled here)."""
    return NativeScaler(device='cpu') if 'device' in inspect.signature(NativeScaler).parameters else NativeScaler()


def fixed_batch(in_chans: int = 3, batch_size: int = 16) -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return dict(x=torch.randn(batch_size, in_chans, IMG_SIZE, IMG_SIZE, generator=generator),
                y=torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator))


@pytest.mark.parametrize('in_chans, gp', [(3, None), (1, 'avg')])
def test_train_py_builds_the_model_it_asks_for(in_chans, gp):
    model = create_as_train_py(train_args(in_chans=in_chans, gp=gp))
    assert model.num_classes == NUM_CLASSES and model.global_pool == (gp or 'token')
    assert model.img_size == (IMG_SIZE, IMG_SIZE) and model.in_chans == in_chans
    assert isinstance(model.blocks[0].drop_path1, torch.nn.Identity)  # stochastic depth rises from 0 to the rate
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    data_config = resolve_data_config(vars(train_args(in_chans=in_chans)), model=model)
    assert data_config['input_size'] == (in_chans, IMG_SIZE, IMG_SIZE)
    out = model.eval()(fixed_batch(in_chans)['x'])
    assert out.shape == (16, NUM_CLASSES) and out.isfinite().all()


def test_data_config_and_transforms_feed_the_model():
    model = create_as_train_py(train_args()).eval()
    data_config = resolve_data_config(vars(train_args()), model=model)
    assert data_config['input_size'] == (3, IMG_SIZE, IMG_SIZE) and data_config['crop_pct'] == model.pretrained_cfg['crop_pct']
    image = Image.new('RGB', (90, 70), color=(200, 30, 60))
    for is_training in (True, False):
        x = create_transform(**data_config, is_training=is_training)(image)
        assert x.shape == (3, IMG_SIZE, IMG_SIZE)
        assert model(x[None]).shape == (1, NUM_CLASSES)


def test_initial_checkpoint_is_loaded_by_train_py(tmp_path):
    torch.manual_seed(1)
    source = create_as_train_py(train_args())
    path = tmp_path / 'initial.pth'
    torch.save(source.state_dict(), path)
    model = create_as_train_py(train_args(initial_checkpoint=str(path)))
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_layer_decay_gives_every_depth_its_own_learning_rate_scale():
    args = train_args()
    model = create_as_train_py(args)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    assert isinstance(optimizer, torch.optim.AdamW)
    group_of = {id(p): group for group in optimizer.param_groups for p in group['params']}
    assert len(group_of) == sum(1 for _ in model.parameters())  # every parameter once
    params = dict(model.named_parameters())
    scale = {name: group_of[id(p)]['lr_scale'] for name, p in params.items()}
    depth = len(model.blocks)
    assert scale['head.weight'] == pytest.approx(1.)
    assert scale['blocks.0.attn.qkv.weight'] == pytest.approx(args.layer_decay ** depth)
    assert scale['blocks.6.attn.qkv.weight'] == pytest.approx(args.layer_decay)
    stem = [name for name in params if name.startswith(('tokens_to_token.', 'pos_embed', 'cls_token'))]
    assert stem and all(scale[name] == pytest.approx(args.layer_decay ** (depth + 1)) for name in stem)
    decay = {name: group_of[id(p)]['weight_decay'] for name, p in params.items()}
    assert decay['blocks.3.mlp.fc1.weight'] == args.weight_decay
    assert decay['blocks.3.norm1.weight'] == decay['blocks.3.mlp.fc1.bias'] == decay['cls_token'] == 0.


def test_training_steps_with_amp_ema_scheduler_saver_and_resume(tmp_path):
    """train.py's loop in small: bf16 autocast as `--amp` runs it (where the CPU runs bf16 faster than fp32; on an
    AVX2-only CPU the loop runs in fp32, 2 s against 17 s in bf16, emulated), the AMP scaler, EMA, the per-update
    schedule, then the checkpoint saver; resume_checkpoint restores the model, optimizer and epoch, load_checkpoint
    picks EMA or not."""
    args = train_args()
    torch.manual_seed(0)
    model = create_as_train_py(args)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    scaler = native_scaler()
    ema = ModelEmaV3(model, decay=0.9)
    steps = 12
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=False), updates_per_epoch=steps // 2)
    assert num_epochs == args.epochs
    batch = fixed_batch()
    losses = []
    amp = bf16_is_faster(bf16_support())
    model.train()
    for step in range(steps):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(batch['x']), batch['y'])
        optimizer.zero_grad()
        scaler(loss, optimizer, clip_grad=1.0, clip_mode='norm', parameters=model.parameters())
        ema.update(model, step=step)
        scheduler.step_update(num_updates=step + 1)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] * 0.75, losses

    model.eval()
    with torch.no_grad():
        top1, top5 = accuracy(model(batch['x']), batch['y'], topk=(1, 5))
    assert top5 >= top1 and top1 > 30.  # ten classes on a batch it has fitted

    saver = CheckpointSaver(
        model=model, optimizer=optimizer, args=args, model_ema=ema, amp_scaler=scaler, checkpoint_dir=str(tmp_path),
        recovery_dir=str(tmp_path), decreasing=False, max_history=args.checkpoint_hist)
    best_metric, best_epoch = saver.save_checkpoint(1, metric=top1.item() if torch.is_tensor(top1) else top1)
    assert best_epoch == 1 and {'last.pth.tar', 'model_best.pth.tar'} <= {p.name for p in tmp_path.iterdir()}
    last = str(tmp_path / 'last.pth.tar')

    resumed = create_as_train_py(train_args())
    resumed_optimizer = create_optimizer_v2(resumed, **optimizer_kwargs(cfg=args))
    resume_epoch = resume_checkpoint(resumed, last, optimizer=resumed_optimizer, loss_scaler=native_scaler(),
                                     log_info=False)
    assert resume_epoch == 2
    _assert_same_weights(resumed, model)
    assert resumed_optimizer.state_dict()['state'][0]['step'] == optimizer.state_dict()['state'][0]['step']
    torch.testing.assert_close(resumed_optimizer.state_dict()['state'][0]['exp_avg'],
                               optimizer.state_dict()['state'][0]['exp_avg'])

    _assert_same_weights(create_as_validate_py(last, use_ema=False), model)
    _assert_same_weights(create_as_validate_py(last, use_ema=True), ema.module)
    assert not torch.equal(ema.module.head.weight, model.head.weight)

    scripted = create_as_validate_py(last, use_ema=True, torchscript=True)
    with torch.no_grad():
        torch.testing.assert_close(scripted(batch['x']), ema.module.eval()(batch['x']), rtol=1e-5, atol=1e-5)


def _assert_same_weights(model: torch.nn.Module, expected: torch.nn.Module) -> None:
    expected_state = expected.state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, expected_state[name], rtol=0, atol=0, msg=name)


def test_benchmark_py_inference_and_training_setup():
    """benchmark.py's create_model call (its command-line defaults), channels-last move, SGD and checkpointing."""
    model = timm.create_model(
        MODEL, num_classes=None, in_chans=3, global_pool=None, scriptable=False, drop_rate=0.,
        drop_path_rate=None, drop_block_rate=None, img_size=IMG_SIZE)
    model.to(device='cpu', dtype=torch.float32, memory_format=torch.channels_last)
    data_config = resolve_data_config({'img_size': IMG_SIZE}, model=model, use_test_size=True)
    assert data_config['input_size'] == (3, IMG_SIZE, IMG_SIZE) and model.num_classes == 1000
    optimizer = create_optimizer_v2(model, opt='sgd', lr=1e-4)
    model.set_grad_checkpointing()
    model.train()
    x = torch.randn(2, *data_config['input_size']).contiguous(memory_format=torch.channels_last)
    loss = F.cross_entropy(model(x), torch.tensor([3, 7]))
    loss.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    optimizer.step()


def test_train_py_rejects_a_checkpoint_for_another_model(tmp_path):
    other = timm.create_model('t2t_vit_7', num_classes=NUM_CLASSES, img_size=IMG_SIZE, embed_dim=128, num_heads=2)
    path = Path(tmp_path) / 'other.pth'
    torch.save(other.state_dict(), path)
    with pytest.raises(RuntimeError, match='embed'):
        create_as_train_py(train_args(initial_checkpoint=str(path)))
