"""DistributedDataParallel training on two CPU processes (gloo): every parameter is used and stays in sync."""
import math

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import timm

ARCH = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, mlp_ratio=1., token_dim=8, num_classes=4)


def _train(rank: int, world_size: int, store: str, results) -> None:
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)  # identical initial weights on every rank
        setups = {
            'classifier': timm.create_model('t2t_vit_7', **ARCH),
            'grad_checkpointing': timm.create_model('t2t_vit_t_14', **ARCH),
            'features_only': timm.create_model('t2t_vit_7', features_only=True, **ARCH),
        }
        setups['grad_checkpointing'].set_grad_checkpointing(True)
        torch.manual_seed(1 + rank)  # different data on every rank
        for name, model in setups.items():
            ddp = DistributedDataParallel(model.train())
            optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
            for _ in range(2):  # DDP raises on the second step if a parameter got no gradient in the first
                out = ddp(torch.randn(2, 3, 64, 64))
                loss = sum(o.square().mean() for o in out) if isinstance(out, list) else out.square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            flat = torch.cat([p.detach().flatten() for p in model.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(world_size)]
            dist.all_gather(gathered, flat)
            results[f'{name}:{rank}'] = (max((g - flat).abs().max().item() for g in gathered), loss.item())
    finally:
        dist.destroy_process_group()


def test_ddp_training_keeps_ranks_in_sync(tmp_path):
    world_size = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_train, args=(world_size, str(tmp_path / 'store'), results), nprocs=world_size, join=True)
        results = dict(results)
    assert len(results) == 3 * world_size
    for key, (spread, loss) in results.items():
        assert spread == 0, key  # the same weights on every rank after each step
        assert math.isfinite(loss) and loss > 0, key
