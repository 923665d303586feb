"""The small-data experiment's T2T-ViT-7, trained once per test session on the digits (about a minute on 2 cores),
under bf16 autocast where the CPU runs bfloat16 faster than float32 and in float32 elsewhere, as the experiment does.

Tests use it as a real model: its accuracy, its export for the command line, and the low-precision recipes.
"""
import dataclasses
from pathlib import Path
from typing import Any, Dict

from benchmarks.small_data import RUNS, Recipe, export, train, write_digits

T2T_RUN = RUNS[0]


@dataclasses.dataclass
class DigitsModel:
    data: Path
    recipe: Recipe
    result: Dict[str, Any]  # what train() reports: curve, top-1, losses
    model: Any  # the trained T2T-ViT-7, eval mode
    folder: Path  # the exported model folder


def train_digits_model(root: Path) -> DigitsModel:
    recipe = Recipe()
    data = write_digits(root / 'data', recipe.img_size, seed=recipe.seed)
    result = train(T2T_RUN, data, root / 'checkpoints', recipe)
    model = result.pop('model_obj').eval()
    result.pop('ema_obj')
    folder = export(model, root / 't2t_vit_7', recipe, dict(img_size=recipe.img_size, num_classes=10))
    return DigitsModel(data, recipe, result, model, folder)
