"""The reference parity cases in tests/fixtures: inputs, logits and checkpoints made by running the reference."""
import dataclasses
import pathlib
from typing import Any, Dict

import torch

from timm_t2t.blocks import DenseBlock, GhostAttention, GhostMlp, SqueezeExciteAttention

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
MAIN_FAMILY_CASES = ('small_performer_64', 'small_transformer_64', 'small_performer_96_in1')
ABLATION_CASES = ('small_se_64', 'small_dense_64', 'small_ghost_64')
PARITY_CASES = MAIN_FAMILY_CASES + ABLATION_CASES
# Performers whose normalizer is tiny (weights perturbed by N(0, 0.1^2)) or underflows in float32 (N(0, 0.2^2)),
# where the reference's eps decides the output; EMA weights only.
SMALL_NORMALIZER_CASES = ('small_performer_64_tiny_normalizer', 'small_performer_64_underflow')

# Each reference class, as this package builds it: an entry point, and the parts T2TViT takes for it.
REFERENCE_CLASSES = {
    'T2T_ViT': ('t2t_vit_7', {}),
    'T2T_ViT_SE': ('t2t_vit_14_se', dict(attn_layer=SqueezeExciteAttention)),
    'T2T_ViT_Dense': ('t2t_vit_dense', dict(block_fn=DenseBlock)),
    'T2T_ViT_Ghost': ('t2t_vit_16_ghost', dict(attn_layer=GhostAttention, mlp_layer=GhostMlp)),
}


@dataclasses.dataclass
class ParityCase:
    """Inputs, reference logits and a training checkpoint written by the reference implementation."""
    name: str
    reference_class: str
    checkpoint_path: pathlib.Path
    checkpoint: Dict[str, Any]
    reference_config: Dict[str, Any]
    inputs: torch.Tensor
    logits: Dict[str, torch.Tensor]  # keyed by the checkpoint entry they come from (those the fixture has)

    @property
    def entry_point(self) -> str:
        """The registered model of the reference class; `architecture` makes it the fixture's size."""
        return REFERENCE_CLASSES[self.reference_class][0]

    @property
    def architecture(self) -> Dict[str, Any]:
        """The reference constructor arguments in this package's names."""
        kwargs = dict(self.reference_config)
        kwargs['t2t_layer'] = kwargs.pop('tokens_type')
        if 'block_config' in kwargs:
            kwargs['depth'] = kwargs.pop('block_config')
        return kwargs

    @property
    def model_kwargs(self) -> Dict[str, Any]:
        """T2TViT's arguments for the fixture's model: its architecture and the parts of its reference class."""
        return {**self.architecture, **REFERENCE_CLASSES[self.reference_class][1]}

    @property
    def input_size(self):
        return tuple(self.inputs.shape[1:])


_LOGITS = {'state_dict': 'logits_state_dict', 'state_dict_ema': 'logits_ema'}  # checkpoint entry -> io key


def load_parity_case(name: str) -> ParityCase:
    io = torch.load(FIXTURES / f'{name}.io.pt', weights_only=True)
    path = FIXTURES / f'{name}.pth.tar'
    return ParityCase(
        name=name,
        reference_class=io.get('class', 'T2T_ViT'),
        checkpoint_path=path,
        checkpoint=torch.load(path, weights_only=True),
        reference_config=io['config'],
        inputs=io['input'],
        logits={entry: io[key] for entry, key in _LOGITS.items() if key in io},
    )


# Full-size reference-format checkpoints made from a seed, with their reference logits: T2T-ViT-14 and the
# ablation classes at 224, weights perturbed as a fine-tune could leave them (issue: the Performer's eps).
FULL_SIZE_FIXTURE = FIXTURES / 'full_size_perturbed.io.pt'
INIT_STD = PERTURBATION_STD = 0.02


def perturbed_reference_state_dict(case: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """A full-size case's reference-format state dict, rebuilt from its seed.

    Every trainable tensor is initialised as the reference initialises it (in distribution: LayerNorm and BatchNorm
    weights 1, biases 0, other weights N(0, 0.02^2)), then perturbed by N(0, 0.02^2); the untrained tensors (the
    Performers' random features, the positional table, BatchNorm statistics) are stored as the reference made them.
    """
    generator = torch.Generator().manual_seed(case['seed'])
    state_dict = {}
    for name, shape, init in case['trainable']:
        if init == 'one':
            value = torch.ones(shape)
        elif init == 'zero':
            value = torch.zeros(shape)
        else:
            value = torch.randn(shape, generator=generator) * INIT_STD
        state_dict[name] = value + torch.randn(shape, generator=generator) * PERTURBATION_STD
    state_dict.update(case['fixed'])
    return state_dict
