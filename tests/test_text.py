"""Counts in messages agree with their number, for one and for none too."""
import pytest
import torch

from timm_t2t._text import plural
from timm_t2t.checkpoint import describe_mismatch
from timm_t2t.tokens_to_token import check_image_batch


@pytest.mark.parametrize('count, noun, words', [
    (0, 'image', '0 images'), (1, 'image', '1 image'), (2, 'image', '2 images'), (1001, 'prediction', '1,001 predictions'),
])
def test_a_noun_takes_the_number_of_its_count(count, noun, words):
    assert plural(count, noun) == words


def test_an_irregular_plural_is_given():
    assert [plural(count, 'class', 'classes') for count in (0, 1, 2)] == ['0 classes', '1 class', '2 classes']


def test_the_library_counts_one_in_the_singular():
    own = {'a': torch.zeros(1), 'b': torch.zeros(1)}
    assert describe_mismatch(own, {'a': torch.zeros(1), 'c': torch.zeros(1)}) == (
        '1 key missing: b; 1 key unexpected: c')
    with pytest.raises(ValueError, match=r'^Expected 1-channel images \(B, 1, H, W\), got shape'):
        check_image_batch(torch.zeros(2, 3, 8, 8), 1, (8, 8), False)
