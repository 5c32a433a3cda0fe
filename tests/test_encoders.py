import os

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


def _with_trained_statistics(encoder: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm affine weights and running statistics, as training leaves them."""
    generator = torch.Generator().manual_seed(3)
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.weight.data = torch.rand(size, generator=generator) + 0.5
            module.bias.data = torch.randn(size, generator=generator)
            module.running_mean = torch.randn(size, generator=generator)
            module.running_var = torch.rand(size, generator=generator) + 0.1
    return encoder.eval()


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_the_inference_copy_folds_batchnorm_and_gives_the_same_features(name):
    from fsl.models.encoders import build_encoder, fused_for_inference

    torch.manual_seed(0)
    encoder = _with_trained_statistics(build_encoder(name, 3, 32, **({"width": 0.25} if name == "resnet12" else {})))
    encoder = encoder.double()  # folding is exact in real numbers: in fp64 only rounding is left
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    images = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    fused = fused_for_inference(encoder)
    with torch.no_grad():
        torch.testing.assert_close(fused(images), encoder(images), rtol=1e-9, atol=1e-12)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())  # every conv-BN pair folded
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # the model is untouched


STEP_FAULTS = """
import resource, sys, torch
torch.set_num_threads(1)
from fsl.models.classifier import FewShotClassifier
from fsl.models.encoders import Conv4
model = FewShotClassifier.from_parts(Conv4(3, 32), image_size=32).to(memory_format=torch.channels_last)
if sys.argv[1] == "placed":  # as every model fsl trains or tests is
    model.place("cpu")
x = torch.rand(80, 3, 32, 32).contiguous(memory_format=torch.channels_last)
def step():
    model.encoder(x).square().mean().backward()
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_a_model_placed_on_the_cpu_reuses_its_freed_buffers_instead_of_faulting_them_in_every_step():
    """`place` keeps glibc's freed blocks for reuse (fsl.runtime.keep_freed_memory): the page
    faults of 10 Conv-4 training steps (the built-in data's 80 images) drop to the one-off ones."""
    import ctypes
    import subprocess
    import sys

    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("not Linux with glibc's mallopt: fsl leaves the allocator alone")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    faults = {mode: int(subprocess.run([sys.executable, "-c", STEP_FAULTS, mode], env=env, capture_output=True,
                                       text=True, check=True, timeout=300).stdout.split()[-1])
              for mode in ("unplaced", "placed")}
    if faults["unplaced"] < 1000:  # huge pages always on, or another allocator: nothing to win here
        pytest.skip(f"this machine's default allocator does not fault its buffers in again: {faults}")
    assert faults["placed"] * 4 < faults["unplaced"], faults
