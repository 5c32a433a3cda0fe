"""Every closed list of choices, in one torch-free module.

The CLI's `click.Choice` lists, `TrainConfig.validate` and the runtime resolvers read these
tuples. The axes users extend (encoders, hallucinators, data formats, distances, augmentation
policies) are not closed: their names, and their settings, are the tables of `fsl.components`.
"""

# Test-time feature transforms: cl2n centres on the base-class mean and l2-normalises (SimpleShot).
# power: Tukey's ladder, x -> (x + 1e-6)^0.5 (Free Lunch, PT-MAP), for features >= 0 (Conv-4's).
FEATURE_TRANSFORMS = ("none", "cl2n", "power")
PRECISIONS = ("auto", "fp32", "bf16", "fp64")  # fp64: double throughout (slow; exact across CPUs)
COMPILE_MODES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda", "mps")  # cuda may carry an index: cuda:1
SPLITS = ("train", "val", "test")
METHODS = ("protonet", "hallucinate")  # what `fsl sweep --method` trains
RESUME_LATEST = "latest"  # `--resume` given without a run id
