"""The small-data experiment on real images: the digits ImageFolder, a T2T-ViT that learns it, and the trained model
as a folder that timm and the command line load."""
import filecmp

import torch
from PIL import Image

from benchmarks.small_data import DIGITS, val_loader, evaluate, write_digits
from timm_t2t._compat import create_model_from_folder
from timm_t2t.cli import main as cli_main


def test_digits_are_written_as_a_stratified_image_folder(tmp_path):
    root = write_digits(tmp_path / 'a', img_size=64, seed=0)
    counts = {split: {d: len(list((root / split / d).glob('*.png'))) for d in DIGITS} for split in ('train', 'val')}
    assert sum(counts['train'].values()) == 1437 and sum(counts['val'].values()) == 360  # 1,797 digits, 20% held out
    for digit in DIGITS:  # every class split about 4:1
        assert 0.17 < counts['val'][digit] / (counts['val'][digit] + counts['train'][digit]) < 0.23
    image = Image.open(next((root / 'val' / '3').glob('*.png')))
    assert image.size == (64, 64) and image.mode == 'L'
    again = write_digits(tmp_path / 'b', img_size=64, seed=0)
    comparison = filecmp.dircmp(root / 'val' / '5', again / 'val' / '5')
    assert comparison.left_list == comparison.right_list and not comparison.diff_files
    assert sorted(p.name for p in (root / 'val' / '5').iterdir()) != sorted(
        p.name for p in (write_digits(tmp_path / 'c', seed=1) / 'val' / '5').iterdir())


def test_t2t_vit_learns_the_digits_from_scratch(digits_model):
    result = digits_model.result
    assert result['val_top1'] >= 90.  # ten classes: chance is 10%
    assert result['val_top1_curve'][-1] > result['val_top1_curve'][0]
    assert result['last_loss'] < result['first_loss'] / 4
    checkpoints = list((digits_model.data.parent / 'checkpoints').glob('*.pth.tar'))
    assert any(p.name == 'last.pth.tar' for p in checkpoints) and any(p.name == 'model_best.pth.tar' for p in checkpoints)


def test_the_trained_model_folder_loads_in_timm_and_the_command_line(digits_model, capsys):
    reloaded = create_model_from_folder(digits_model.folder).eval()
    assert reloaded.pretrained_cfg['input_size'] == (3, 64, 64) and reloaded.num_classes == 10
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), digits_model.model(x))
    assert abs(evaluate(reloaded, val_loader(digits_model.data, digits_model.recipe))
               - evaluate(digits_model.model, val_loader(digits_model.data, digits_model.recipe))) < 1e-9

    cli_main(['classify', str(digits_model.data / 'val' / '4'), '--weights', str(digits_model.folder), '--top-k', '1'])
    labels = [line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.startswith('  ')]
    assert len(labels) == 36 and labels.count('4') >= 32  # the digit names travel with the folder
