"""The reference parity cases in tests/fixtures: inputs, logits and checkpoints made by running the reference."""
import dataclasses
import pathlib
from typing import Any, Dict

import torch

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
PARITY_CASES = ('small_performer_64', 'small_transformer_64', 'small_performer_96_in1')


@dataclasses.dataclass
class ParityCase:
    """Inputs, reference logits and a training checkpoint written by the reference implementation."""
    name: str
    checkpoint_path: pathlib.Path
    checkpoint: Dict[str, Any]
    reference_config: Dict[str, Any]
    inputs: torch.Tensor
    logits: Dict[str, torch.Tensor]  # keyed by the checkpoint entry they come from

    @property
    def model_kwargs(self) -> Dict[str, Any]:
        """The reference constructor arguments in this package's names."""
        kwargs = dict(self.reference_config)
        kwargs['t2t_layer'] = kwargs.pop('tokens_type')
        return kwargs

    @property
    def input_size(self):
        return tuple(self.inputs.shape[1:])


def load_parity_case(name: str) -> ParityCase:
    io = torch.load(FIXTURES / f'{name}.io.pt', weights_only=True)
    path = FIXTURES / f'{name}.pth.tar'
    return ParityCase(
        name=name,
        checkpoint_path=path,
        checkpoint=torch.load(path, weights_only=True),
        reference_config=io['config'],
        inputs=io['input'],
        logits={'state_dict': io['logits_state_dict'], 'state_dict_ema': io['logits_ema']},
    )
