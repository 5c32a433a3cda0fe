import torch

from fsl.data.augment import random_affine


def test_random_affine_keeps_the_shape_and_repeats_from_a_seed():
    x = torch.rand(6, 3, 16, 16)
    a = random_affine(x, torch.Generator().manual_seed(0))
    b = random_affine(x, torch.Generator().manual_seed(0))
    c = random_affine(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_random_affine_with_no_range_is_the_identity():
    x = torch.rand(4, 1, 12, 12)
    out = random_affine(x, None, max_shift=0.0, max_degrees=0.0, scale=(1.0, 1.0))
    assert torch.allclose(out, x, atol=1e-5)


def test_a_shift_moves_the_image_and_borders_are_replicated():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 3:5, 3:5] = 1.0
    x[..., :, 0] = 0.5  # the left border column
    out = random_affine(x, torch.Generator().manual_seed(3), max_shift=0.25, max_degrees=0.0, scale=(1.0, 1.0))
    assert not torch.allclose(out, x)
    assert out.min() >= 0 and out.max() <= 1.0 + 1e-6  # interpolation stays within the image's values
