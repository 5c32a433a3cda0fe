import pytest
import torch

from fsl.models.encoders import Conv4


@pytest.mark.parametrize("size, channels, dim", [(28, 1, 64), (32, 3, 256), (84, 3, 1600)])
def test_conv4_feature_size_follows_the_input_size(size, channels, dim):
    encoder = Conv4(in_channels=channels, image_size=size)
    out = encoder(torch.zeros(2, channels, size, size).normal_())
    assert encoder.out_dim == dim
    assert out.shape == (2, dim)


def test_conv4_has_four_conv_bn_relu_pool_blocks_of_64_channels():
    encoder = Conv4()
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4
    assert all(c.out_channels == 64 and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules()) == 4
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in encoder.modules()) == 4


def test_conv4_rejects_images_too_small_to_pool_four_times():
    with pytest.raises(ValueError, match="16x16"):
        Conv4(image_size=8)
