"""Every closed list of choices, in one torch-free module.

The CLI's `click.Choice` lists, `TrainConfig.validate`, the runtime resolvers and the registries
of distances, hallucinators and readers all read these tuples, so a choice is added in one place
(tests check that each registry's names equal its tuple here).
"""

DISTANCES = ("l2", "cosine", "dot")
ENCODERS = ("conv4", "resnet12")
AUGMENTATIONS = ("none", "omniglot", "standard")  # a bare --augment is omniglot (fsl 0.1)
# Test-time feature transforms: cl2n centres on the base-class mean and l2-normalises (SimpleShot).
FEATURE_TRANSFORMS = ("none", "cl2n")
HALLUCINATORS = ("wang", "improved", "calibrated")
# Hallucinators that do not act in training: the trained weights do not depend on M, so a sweep
# trains one model per seed for all M and tests it at each (`fsl.sweeps.trained_twin`).
TEST_TIME_HALLUCINATORS = ("calibrated",)
FORMATS = ("ravi", "course", "split-folders", "class-folders", "l2l-pickle", "metaoptnet-pickle")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda", "mps")  # cuda may carry an index: cuda:1
SPLITS = ("train", "val", "test")
METHODS = ("protonet", "hallucinate")  # what `fsl sweep --method` trains
RESUME_LATEST = "latest"  # `--resume` given without a run id
