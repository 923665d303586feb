"""What the package offers, measured: each variant's size and cost, its pretrained tags, and where weights come from.

Parameters and MACs are counted on the model itself, built on the meta device (no memory, no weights), with
torch's FlopCounterMode at the variant's default input size. The paper's numbers are quoted separately and only
for the configurations they describe.
"""
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Tuple

import timm
import torch
from timm.models._hub import hf_split
from torch.utils.flop_counter import FlopCounterMode

from .blocks import Transition
from .hub import cached_weights, is_commit, release_records
from .t2t_vit import RELEASE_DIGESTS

__all__ = [
    'PAPER_MODEL_STATS', 'PAPER_TOP1', 'ModelStats', 'check_model_name', 'check_pretrained_tag', 'describe_model',
    'measure', 'variants',
]

# Paper numbers: (params in millions, GMACs at 224) per architecture, top-1 per released checkpoint.
PAPER_MODEL_STATS = {
    't2t_vit_7': (4.3, 1.1),
    't2t_vit_10': (5.9, 1.5),
    't2t_vit_12': (6.9, 1.8),
    't2t_vit_14': (21.5, 4.8),
    't2t_vit_19': (39.2, 8.5),
    't2t_vit_24': (64.1, 13.8),
    't2t_vit_t_14': (21.5, 6.1),
    't2t_vit_t_19': (39.2, 9.8),
    't2t_vit_t_24': (64.1, 15.0),
}
PAPER_TOP1 = {
    't2t_vit_7.in1k': 71.7,
    't2t_vit_10.in1k': 75.2,
    't2t_vit_12.in1k': 76.5,
    't2t_vit_14.in1k': 81.5,
    't2t_vit_14.in1k_384': 83.3,
    't2t_vit_14.in1k_ft_cifar10': 98.3,
    't2t_vit_14.in1k_ft_cifar100': 88.4,
    't2t_vit_19.in1k': 81.9,
    't2t_vit_19.in1k_ft_cifar10': 98.4,
    't2t_vit_19.in1k_ft_cifar100': 89.0,
    't2t_vit_24.in1k': 82.3,
    't2t_vit_24.tl_in1k': 84.2,
    't2t_vit_t_14.in1k': 81.7,
    't2t_vit_t_19.in1k': 82.4,
    't2t_vit_t_24.in1k': 82.6,
}


@dataclasses.dataclass
class ModelStats:
    name: str
    params: int
    macs: int
    input_size: Tuple[int, int, int]


def _count(name: str, model: torch.nn.Module) -> ModelStats:
    input_size = (model.in_chans, *model.img_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.empty(1, *input_size, device='meta'))
    params = sum(p.numel() for p in model.parameters())
    return ModelStats(name, params, counter.get_total_flops() // 2, input_size)


def check_model_name(name: str) -> None:
    """Raise ValueError naming the problem unless `name` is a T2T-ViT entry point, with a pretrained tag it has."""
    architecture, _, tag = name.partition('.')
    if architecture not in timm.list_models('t2t_vit*'):
        if Path(name).exists():
            raise ValueError(f'{name} is a path, not a model name (classify and features take a model folder or '
                             f'checkpoint with --weights).')
        if architecture in timm.list_models():
            raise ValueError(f'{architecture!r} is a timm model but not a T2T-ViT; `timm-t2t list` shows the T2T-ViT '
                             f'variants (`timm-t2t features` takes any timm model).')
        raise ValueError(f'Unknown model {architecture!r}; `timm-t2t list` shows the T2T-ViT variants.')
    check_pretrained_tag(architecture, tag)


def check_pretrained_tag(architecture: str, tag: str) -> None:
    """Raise ValueError naming the tags there are unless a registered architecture has the pretrained `tag` (or no
    tag is asked for)."""
    tagged = timm.list_pretrained(f'{architecture}.*')
    if tag and f'{architecture}.{tag}' not in tagged:
        tags = ', '.join(t.split('.', 1)[1] for t in tagged) or 'none'
        raise ValueError(f'{architecture} has no pretrained tag {tag!r} (its tags: {tags}).')


def measure(name: str, **kwargs: Any) -> ModelStats:
    """Parameters and multiply-accumulates of one forward pass of a registered model at its input size."""
    return _count(name, timm.create_model(name, device='meta', **kwargs))


def variants() -> List[Dict[str, Any]]:
    """Every registered T2T-ViT variant: measured size and cost, T2T layer, and its pretrained tags with the paper's
    top-1 and whether their weights are in the local cache."""
    rows = []
    for name in timm.list_models('t2t_vit*'):
        model = timm.create_model(name, device='meta')
        stats = _count(name, model)
        tags = []
        for tagged in timm.list_pretrained(f'{name}.*'):
            cfg = timm.models.get_pretrained_cfg(tagged).to_dict()
            tags.append(dict(tag=tagged.split('.', 1)[1], top1=PAPER_TOP1.get(tagged), cached=bool(cached_weights(cfg))))
        rows.append(dict(
            model=name,
            stem=_stem(model),
            width=model.embed_dim,
            depth=sum(not isinstance(block, Transition) for block in model.blocks),
            params=stats.params,
            macs=stats.macs,
            input_size=list(stats.input_size),
            tags=tags,
        ))
    return rows


def _stem(model: torch.nn.Module) -> str:
    stem = model.tokens_to_token
    if type(stem).__name__ == 'ConvTokenizer':
        return 'hard split' if len(stem.convs) == 1 else 'convolutions'
    return 'performer' if hasattr(stem.attention1.attn, 'random_features') else 'transformer'


def _release_digest(url: str) -> Dict[str, Any]:
    """The digest a release file must match: the published one, else that of its first download here (if any)."""
    if url in RELEASE_DIGESTS:
        digest = RELEASE_DIGESTS[url]
        return dict(published=True, size=digest.size, sha384=digest.sha384, first_download=None)
    recorded = release_records(url).first_download(url)
    if recorded is None:
        return dict(published=False, size=None, sha384=None, first_download=None)
    digest, when = recorded
    return dict(published=False, size=digest.size, sha384=digest.sha384, first_download=when)


def describe_model(name: str) -> Dict[str, Any]:
    """A model name with or without its pretrained tag, resolved: its pretrained cfg, input size, feature pyramid,
    size and cost, and where its weights come from."""
    check_model_name(name)
    model = timm.create_model(name, device='meta')
    cfg = model.pretrained_cfg
    features = timm.create_model(name, device='meta', features_only=True)
    stats = _count(name, model)
    tagged = '.'.join(filter(None, (cfg.get('architecture'), cfg.get('tag'))))
    has_weights = bool(cfg.get('hf_hub_id') or cfg.get('url'))
    revision = hf_split(cfg['hf_hub_id'])[1] if cfg.get('hf_hub_id') else None
    return dict(
        model=tagged,
        stem=_stem(model),
        params=stats.params,
        macs=stats.macs,
        input_size=list(stats.input_size),
        pretrained_cfg={k: v for k, v in cfg.items() if v is not None},
        feature_pyramid=[
            dict(module=info['module'], channels=info['num_chs'], stride=info['reduction'])
            for info in features.feature_info.get_dicts()],
        weights=dict(
            hub=cfg.get('hf_hub_id'),
            hub_revision=revision,
            hub_pinned=is_commit(revision),
            release_url=cfg.get('url') or None,
            release_digest=_release_digest(cfg['url']) if cfg.get('url') else None,
            cached=cached_weights(cfg) if has_weights else None,
            paper_top1=PAPER_TOP1.get(tagged),
        ) if has_weights else None,
    )
