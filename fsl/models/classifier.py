"""FewShotClassifier: the one object that is trained, checkpointed, logged and registered.

It holds the encoder, the optional hallucinator, the distance and the preprocessing it was
trained with (input size, channels, normalisation, precision, M), so that a checkpoint or a
registered model rebuilds itself and classifies new images without the command line.
"""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fsl import compat
from fsl.choices import FEATURE_TRANSFORMS
from fsl.components import AUGMENTATIONS, DISTANCES, ENCODERS, HALLUCINATORS, HEADS
from fsl.models.distances import logits as distance_logits
from fsl.models.distances import prototypes
from fsl.models.encoders import Encoder
from fsl.models.hallucinator import Hallucinator, hallucinate
from fsl.models.head_maths import power_transform
from fsl.models.noise import episode_keys, label_ids
from fsl.runtime import (
    autocast,
    compute_dtype,
    default_dtype,
    keep_freed_memory,
    make_generator,
    resolve_precision,
    seed_everything,
)
from fsl.settings import settings_of, specs

if TYPE_CHECKING:
    from fsl.config import ModelSpec, TrainConfig
    from fsl.data.store import DataSet

SCHEMA_VERSION = compat.SCHEMA_VERSION  # the hallucinator's weights under `hallucinator.` (fsl.compat)
CLASSIFY_SEED = 0  # the noise seed of `classify`: the same call always gives the same answer
TEST_VIEW_SEED = 1_000  # view k of `--test-views` is the transform that generator seed 1000 + k draws


class Prediction(NamedTuple):
    """labels: the predicted label of each query; probs: float [Q, N] over the support classes
    in first-appearance order."""

    labels: list
    probs: torch.Tensor


def model_config(spec: "ModelSpec", *, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float],
                 precision: str = "fp32") -> dict[str, Any]:
    """The plain dict that rebuilds a model from `spec` (its components and their settings) and
    the data's input: it is saved in every checkpoint and logged model.

    `augment` is the policy the model was trained with; `test_views` > 0 draws that many views of
    every test image from it and averages their features with the image's (test-time augmentation).
    Each component's settings are saved in full (`<axis>_args`); configs saved by earlier versions
    are read through `fsl.compat.current_model_config`. ValueError for an unknown name or setting."""
    encoder, hallucinator = spec.encoder, spec.hallucinator
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")
    if spec.feature_transform not in FEATURE_TRANSFORMS:
        raise ValueError(f"unknown feature transform {spec.feature_transform!r}; "
                         f"choose from {', '.join(FEATURE_TRANSFORMS)}")
    if spec.distance not in DISTANCES:
        raise ValueError(f"unknown distance {spec.distance!r}; choose from {sorted(DISTANCES)}")
    if hallucinator is not None and hallucinator not in HALLUCINATORS:
        raise ValueError(f"unknown hallucinator {hallucinator!r}; choose from {', '.join(HALLUCINATORS)}")
    if spec.augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {spec.augment!r}; choose from {', '.join(AUGMENTATIONS)}")
    if spec.test_views < 0 or (spec.test_views and AUGMENTATIONS[spec.augment] is None):
        raise ValueError(f"test_views={spec.test_views} needs a count >= 0 and, above 0, an augmentation policy "
                         f"to draw the views from (augment={spec.augment!r})")
    return {"encoder": encoder, "encoder_args": _checked(ENCODERS, encoder, spec.encoder_args),
            "image_size": int(image_size), "channels": int(channels),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std], "distance": spec.distance,
            "precision": precision, "hallucinator": hallucinator,
            "hallucinator_args": _checked(HALLUCINATORS, hallucinator, spec.hallucinator_args) if hallucinator else {},
            "hallucinations": int(spec.M) if hallucinator else 0,  # saved key: M
            "feature_transform": spec.feature_transform, "augment": spec.augment, "test_views": int(spec.test_views),
            "logit_scale": float(spec.logit_scale), "learn_logit_scale": bool(spec.learn_logit_scale),
            "head": spec.head, "head_args": _checked(HEADS, spec.head, spec.head_args)}


def _checked(table, name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every setting of a component, checked (ValueError, not the CLI's UsageError: a model can be
    built from Python)."""
    try:
        return table.resolve(name, given)
    except Exception as exc:  # fsl.errors.UsageError names the option; here it is a bad argument
        raise ValueError(str(exc)) from None


def config_value(config: dict[str, Any], key: str) -> Any:
    """A model config's value, with the pre-change default for keys older models lack."""
    return compat.current_model_config(config)[key]


class FewShotClassifier(nn.Module):
    """Encoder + optional hallucinator + distance + preprocessing.

    Images enter as uint8 [B, C, H, W] (0..255) or float in [0, 1]; `prepare` resizes and
    normalises them on their device, so no PIL or per-image Python runs in a training step.
    """

    # buffers (register_buffer), declared for the type checker; base_mean only with cl2n
    mean: torch.Tensor
    std: torch.Tensor
    base_mean: torch.Tensor

    def __init__(self, config: dict[str, Any], encoder: Encoder | None = None,
                 hallucinator: Hallucinator | None = None) -> None:
        super().__init__()
        config = compat.current_model_config(copy.deepcopy(config))  # a saved config may predate some keys
        with default_dtype(compute_dtype(config["precision"])):
            if encoder is None:
                encoder = ENCODERS.create(config["encoder"], config["channels"], config["image_size"],
                                          **config.get("encoder_args", {}))
            kind = config.get("hallucinator")
            if hallucinator is None and kind:
                hallucinator = HALLUCINATORS.create(kind, encoder.out_dim, **config.get("hallucinator_args", {}))
        self.encoder, self.hallucinator = encoder, hallucinator
        self.head = HEADS.create(config["head"], **config.get("head_args", {}))  # no weights: not a submodule
        # what rebuilds it: each component's settings as it holds them (every one, defaults too)
        self.config: dict[str, Any] = config | {"encoder_args": settings_of(encoder),
                                                "hallucinator_args": settings_of(hallucinator) if hallucinator else {},
                                                "head_args": settings_of(self.head)}
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, -1, 1, 1), persistent=False)
        if config["learn_logit_scale"]:  # TADAM's alpha, learned as its log (it stays positive)
            self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config["logit_scale"]), dtype=self.dtype))
        if config["feature_transform"] == "cl2n":
            # The base-class feature mean: saved with the weights, set by `set_base_mean`.
            self.register_buffer("base_mean", torch.zeros(self.encoder.out_dim))

    @classmethod
    def for_data(cls, data, spec: "ModelSpec | None" = None, *, precision: str = "fp32",
                 **fields: Any) -> "FewShotClassifier":
        """A new model of `spec` (default: a Conv-4 ProtoNet), or of a `ModelSpec` of the given
        `fields` (`hallucinator="calibrated", M=5`), for a `DataSet`: its input size, channels and
        train-split normalisation."""
        from fsl.config import ModelSpec

        spec = spec or ModelSpec(**fields)
        # "unit": images in [0, 1] as they are (no mean and std of the training split)
        unit = ([0.0] * data.channels, [1.0] * data.channels)
        mean, std = data.channel_stats() if spec.input_norm == "data" else unit
        return cls(model_config(spec, image_size=data.image_size, channels=data.channels, mean=mean, std=std,
                                precision=precision))

    @classmethod
    def from_parts(cls, encoder: Any, *, image_size: int, channels: int = 3,
                   mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25),
                   distance: str = "euclidean", hallucinator: Hallucinator | None = None, M: int = 0,
                   precision: str = "fp32") -> "FewShotClassifier":
        """A model around a research backbone you built yourself, registered or not (as easyfsl's
        `FewShotClassifier(backbone)`): `encoder` maps [B, channels, image_size, image_size] to
        [B, D] and has `out_dim` (or is probed for it). It trains, tests and classifies like any
        other; saving it as a checkpoint needs its encoder registered (a checkpoint names it)."""
        if not hasattr(encoder, "out_dim"):
            with torch.no_grad():
                encoder.out_dim = int(encoder(torch.zeros(1, channels, image_size, image_size)).shape[-1])
        name = next((n for n in ENCODERS if isinstance(encoder, ENCODERS[n])), type(encoder).__name__)
        config = {"encoder": name, "image_size": int(image_size), "channels": int(channels),
                  "mean": [float(v) for v in mean][:channels], "std": [float(v) for v in std][:channels],
                  "distance": distance, "precision": precision,
                  "hallucinator": _table_name(HALLUCINATORS, hallucinator), "hallucinations": int(M)}
        return cls(config, encoder=encoder, hallucinator=hallucinator)

    @property
    def needs_base_mean(self) -> bool:
        """Whether the test-time features need the base-class mean of the current encoder."""
        return hasattr(self, "base_mean")

    def set_base_mean(self, mean: torch.Tensor) -> None:
        """mean: float [D], the mean feature of the base (training) classes under this encoder."""
        self.base_mean.copy_(mean.to(self.base_mean))

    @property
    def feature_dim(self) -> int:
        return self.encoder.out_dim

    @property
    def M(self) -> int:
        """Hallucinated features per class (0 without a hallucinator)."""
        return self.config["hallucinations"] if self.hallucinator is not None else 0

    def set_hallucinations(self, M: int) -> "FewShotClassifier":
        """Hallucinate M features per class from now on (saved in the config). Meant for a
        hallucinator that does not train with the encoder, where M is a test-time choice."""
        if self.hallucinator is None:
            raise ValueError("this model has no hallucinator")
        self.config["hallucinations"] = int(M)
        return self

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        """What features and logits are computed in: float64 for `fp64`, else float32 (bf16
        autocasts only the encoder and hallucinator, whose outputs are read back as float32)."""
        return compute_dtype(self.config["precision"])

    def place(self, device: torch.device | str) -> "FewShotClassifier":
        """Move to `device` in the fast memory format: channels-last (not on MPS, which lacks it),
        in float64 for a `fp64` model. On the CPU, the C library's malloc is told to keep freed
        buffers for reuse (`fsl.runtime.keep_freed_memory`: a process-wide setting)."""
        device = torch.device(device)
        if device.type == "cpu":
            keep_freed_memory()
        self.to(device, self.dtype)
        return self if device.type == "mps" else self.to(memory_format=torch.channels_last)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float [B, C, H, W] -> normalised float [B, C, S, S], channels-last."""
        if images.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        channels = self.config["channels"]
        if images.shape[1] != channels:
            if images.shape[1] == 1 and channels == 3:
                images = images.expand(-1, 3, -1, -1)  # a grey image is a valid RGB image
            else:
                raise ValueError(f"this model takes {channels}-channel images, got {images.shape[1]} channels")
        x = (self._unit_scale(images.to(self.device, non_blocking=True)) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if x.device.type != "mps" else x

    def _unit_scale(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float [B, C, H, W] -> float [B, C, S, S] in [0, 1] at the model's size."""
        x = images.to(self.dtype).div_(255) if images.dtype == torch.uint8 else images.to(self.dtype)
        size = self.config["image_size"]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> features [B, D]: what the PyTorch flavour's pyfunc `predict` returns."""
        return self.embed(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> features [B, D] (`dtype`), under the model's precision."""
        return self._encode(self.prepare(images))

    def _encode(self, prepared: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        with autocast(self.device, self.config["precision"]):
            return (self.encoder if encoder is None else encoder)(prepared).to(self.dtype)

    def embed_episode(self, support_images: torch.Tensor, query_images: torch.Tensor,
                      encoder: nn.Module | None = None,
                      augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      split: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """support [E, S, C, H, W], query [E, Q, C, H, W] -> features [E, S, D], [E, Q, D].

        Prepared apart (their sizes may differ), encoded together: one encoder call per step,
        so BatchNorm sees the whole episode, as in Snell et al.'s implementation; `split` encodes
        support and query in two calls instead (`--batch-norm split`: in training, BatchNorm's
        statistics are then each set's own, as in easyfsl). `encoder` replaces self.encoder for this
        call (the trainer passes a compiled one); `augment` transforms the prepared batch (training
        only). In eval mode with `test_views`, each feature is the mean over the image and its
        test-time views (`mean_over_views`).
        """
        e, s, q = support_images.shape[0], support_images.shape[1], query_images.shape[1]
        prepared = torch.cat([self.prepare(support_images.flatten(0, 1)), self.prepare(query_images.flatten(0, 1))])
        if augment is None and not self.training and self.config["test_views"]:
            features = self.mean_over_views(prepared)
        else:
            prepared = augment(prepared) if augment else prepared
            features = torch.cat([self._encode(prepared[: e * s], encoder), self._encode(prepared[e * s:], encoder)]) \
                if split else self._encode(prepared, encoder)
        return features[: e * s].view(e, s, -1), features[e * s:].view(e, q, -1)

    def mean_over_views(self, prepared: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        """Test-time augmentation: prepared [B, C, H, W] -> float32 [B, D], the mean feature of each
        image and `test_views` views of it. View k is one fixed transform of the training policy
        (`augment`), drawn from seed TEST_VIEW_SEED + k for the whole batch: an image's features do
        not depend on the other images of its batch, the chunking or the request. On Omniglot 16
        views add about +0.9 / +2.5 points at 5- / 20-way 1-shot (BENCHMARKS.md §6); each costs one
        more encoder pass. Views are encoded one at a time (eval-mode BatchNorm does not mix them)."""
        policy = AUGMENTATIONS[self.config["augment"]]
        total = self._encode(prepared, encoder)
        for k in range(self.config["test_views"]):
            view = policy(prepared, make_generator(TEST_VIEW_SEED + k, prepared.device), self.mean, self.std,
                          per_image=False)
            total = total + self._encode(view, encoder)
        return total / (self.config["test_views"] + 1)

    @torch.no_grad()
    def test_features(self, images: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        """Images [B, C, H, W] -> features float32 [B, D] as a test episode sees them (eval mode):
        with the test-time views where the model has them. What CL2N's base mean is taken from.
        `encoder` replaces self.encoder for this call (evaluation passes `fused_for_inference`'s)."""
        prepared = self.prepare(images)
        return self.mean_over_views(prepared, encoder) if self.config["test_views"] else \
            self._encode(prepared, encoder)

    def kind(self) -> dict[str, Any]:
        """The config without what a test-time setting may change on the same trained weights (M),
        nor, without test views, the training policy (which models saved before it was kept lack):
        two models of the same kind load each other's weights and test alike."""
        ignored = {"hallucinations": 0, "head": None, "head_args": None} | (
            {} if self.config["test_views"] else {"augment": None})
        return self.config | ignored

    @contextlib.contextmanager
    def using_head(self, name: str, **settings: Any) -> Iterator["FewShotClassifier"]:
        """This model with head `name` for the block (validation: always the prototype rule, so
        that val accuracies, the best epoch and the champion rule do not depend on `--head`)."""
        head, config = self.head, (self.config["head"], self.config["head_args"])
        self.set_head(name, **settings)
        try:
            yield self
        finally:
            self.head, (self.config["head"], self.config["head_args"]) = head, config

    def set_head(self, name: str, **settings: Any) -> "FewShotClassifier":
        """Classify test episodes with head `name` (`fsl.components.HEADS`) from now on (saved in the
        config); training and validation keep the prototype rule."""
        self.head = HEADS.create(name, **settings)
        self.config["head"], self.config["head_args"] = name, settings_of(self.head)
        return self

    def logits_from_features(self, support: torch.Tensor, support_labels: torch.Tensor,
                             queries: torch.Tensor, ways: int, M: int | None = None,
                             keys: torch.Tensor | None = None) -> torch.Tensor:
        """support [E, S, D], labels int64 [E, S] in 0..ways-1, queries [E, Q, D] -> [E, Q, ways].

        With a hallucinator and M > 0, each prototype combines the class's K real and M hallucinated
        features as the hallucinator says (Wang: their plain mean); `keys` int64 [E, ways] are the
        classes' noise keys (`fsl.models.noise`). `M` overrides the model's M.
        """
        labels = support_labels.to(support.device)
        if not self.training and self.config["head"] != "prototype":
            return self._head_logits(support, labels, queries, ways, self.hallucinate_support(
                support, labels, ways, M, keys))
        power = self.config["feature_transform"] == "power" and not self.training
        # the prototypes before the hallucinations: the order autograd accumulates gradients in,
        # which the golden numbers pin to the last bit
        protos = prototypes(power_transform(support.clamp_min(0)) if power else support, labels, ways)
        hallucinated = self.hallucinate_support(support, labels, ways, M, keys)
        if power:
            queries = power_transform(queries.clamp_min(0))
            if hallucinated is not None:
                hallucinated = (power_transform(hallucinated[0].clamp_min(0)), hallucinated[1])
        if hallucinated is not None:
            fake, fake_labels = hallucinated
            real_counts = torch.nn.functional.one_hot(labels, ways).sum(-2)
            assert self.hallucinator is not None  # hallucinate_support returned features
            protos = self.hallucinator.combine(protos, prototypes(fake, fake_labels, ways), real_counts,
                                               fake.shape[-2] // ways)
        if self.needs_base_mean and not self.training:
            protos, queries = self.centre_and_normalise(protos), self.centre_and_normalise(queries)
        logits = distance_logits(queries, protos, self.config["distance"])
        if self.config["learn_logit_scale"]:
            return logits * self.log_logit_scale.exp().to(logits.dtype)
        return logits if self.config["logit_scale"] == 1 else logits * self.config["logit_scale"]

    def _head_logits(self, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int,
                     hallucinated: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """A test-time head other than the prototype (`fsl.models.heads`): the hallucinated features
        are more labelled support, weighted by the head's `hallucinated_weight` where it has one;
        the feature transform (CL2N, power) applies to every feature first. [E, S, D] -> [E, Q, N]."""
        weights = None
        if hallucinated is not None:
            fake, fake_labels = hallucinated
            share = getattr(self.head, "hallucinated_weight", 1.0)
            weights = torch.cat([torch.ones(labels.shape, device=support.device),
                                 torch.full(fake_labels.shape, float(share), device=support.device)], -1)
            support, labels = torch.cat([support, fake.to(support.dtype)], -2), torch.cat([labels, fake_labels], -1)
        if getattr(self.head, "own_features", False):
            pass  # the head's own pipeline (PT-MAP) takes the raw features
        elif self.needs_base_mean:
            support, queries = self.centre_and_normalise(support), self.centre_and_normalise(queries)
        elif self.config["feature_transform"] == "power":
            support, queries = power_transform(support.clamp_min(0)), power_transform(queries.clamp_min(0))
        return in_canonical_order(self.head, support, labels, queries, ways, weights).to(self.dtype)

    def centre_and_normalise(self, features: torch.Tensor) -> torch.Tensor:
        """SimpleShot's CL2N (Wang et al. 2019): [..., D] -> (f - base mean) / |f - base mean|.

        Applied at test time to the final prototypes (after any hallucination, which works on raw
        features) and to the queries; training is a plain ProtoNet's."""
        return F.normalize(features - self.base_mean, dim=-1)

    def hallucinate_support(self, support: torch.Tensor, support_labels: torch.Tensor, ways: int,
                            M: int | None = None, keys: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """M hallucinated features per class (Wang et al. 2018), or None with the hallucinator off.

        support [E, N*K, D], labels int64 [E, N*K], keys int64 [E, N] (each class's noise key, needed
        whenever features are hallucinated) -> (fake [E, N*M, D] in `dtype`, labels [E, N*M]),
        class-major; `M` overrides the model's M (0 turns the hallucinator off). A hallucinator with
        `trains_with_encoder = False` is off in training mode.
        """
        M = self.M if M is None else M
        if M <= 0 or self.hallucinator is None:
            return None
        if self.training and not self.hallucinator.trains_with_encoder:
            return None  # a test-time hallucinator (`calibrated`): training is a plain ProtoNet's
        if keys is None:
            raise ValueError("hallucinating needs the classes' noise keys (fsl.models.noise.episode_keys)")
        with autocast(self.device, self.config["precision"]):
            fake, fake_labels = hallucinate(self.hallucinator, support, support_labels, ways, M, keys)
        return fake.to(self.dtype), fake_labels

    def episode_logits(self, support_images: torch.Tensor, support_labels: torch.Tensor,
                       query_images: torch.Tensor, ways: int, M: int | None = None,
                       keys: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of E episodes at once (E may be left out).

        support_images [E, S, C, H, W]; support_labels int64 [E, S] in 0..ways-1;
        query_images [E, Q, C, H, W]; keys int64 [E, ways] (or [ways]) -> logits [E, Q, ways].
        """
        single = support_images.dim() == 4
        if single:
            support_images, support_labels, query_images = (
                support_images[None], support_labels[None], query_images[None])
            keys = None if keys is None else keys.reshape(1, -1)
        support, queries = self.embed_episode(support_images, query_images)
        out = self.logits_from_features(support, support_labels, queries, ways, M, keys)
        return out[0] if single else out

    @torch.no_grad()
    def classify(self, support_images: torch.Tensor, support_labels: Sequence[Hashable],
                 query_images: torch.Tensor) -> Prediction:
        """Classify query images given labelled support images, as in training.

        support_images [S, C, H, W] and query_images [Q, C, H, W]: uint8 in 0..255 or float in
        [0, 1], any size (resized to the model's input). support_labels: S hashable values.
        Runs in eval mode with generator noise keyed by each label (`fsl.models.noise.label_ids`),
        so the same call gives the same answer, whatever the order of the support and the queries.
        """
        if len(support_labels) != len(support_images):
            raise ValueError(f"{len(support_images)} support images but {len(support_labels)} labels")
        classes = list(dict.fromkeys(support_labels))
        index = {label: i for i, label in enumerate(classes)}
        labels = torch.tensor([index[label] for label in support_labels], device=self.device)
        keys = episode_keys(CLASSIFY_SEED, [0], label_ids(classes)[None])
        was_training = self.training
        self.eval()
        try:
            logits = self.episode_logits(support_images, labels, query_images, len(classes), keys=keys)
        finally:
            self.train(was_training)
        probs = logits.softmax(-1).float().cpu()
        return Prediction([classes[i] for i in probs.argmax(-1).tolist()], probs)

    def checkpoint(self, **meta: Any) -> dict[str, Any]:
        """A dict that `torch.load(weights_only=True)` reads back: tensors and plain values only."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return {"schema_version": SCHEMA_VERSION, "config": copy.deepcopy(self.config),
                "state_dict": state, "meta": meta}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> "FewShotClassifier":
        model = cls(checkpoint["config"])
        model.load_state_dict(current_state_dict(checkpoint))
        model.trained_with = dict(checkpoint.get("meta") or {})
        return model

    # What the checkpoint's `meta` says of the run that saved it (val_acc, epoch, test_seed, ...).
    trained_with: dict[str, Any] = {}

    @property
    def training_test_seed(self) -> int:
        """The seed of the test episodes the training run tested on: from the checkpoint, or 2,
        the default of every fsl before it was saved."""
        return int(self.trained_with.get("test_seed", 2))

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Models pickled by earlier versions (registered PyTorch models) skip `__init__`: fsl 0.1.0's
        hold their hallucinator as the submodule `generator`; their config lacks the keys added
        since (`fsl.compat.current_model_config`), and their components the settings declared
        since, which get their defaults (the values that reproduce them)."""
        modules = state.get("_modules", {})
        if "generator" in modules:
            modules["hallucinator"] = modules.pop("generator")
        config = compat.current_model_config(state.get("config", {}))
        for axis in ("encoder", "hallucinator"):
            component, saved = modules.get(axis), config.get(f"{axis}_args") or {}
            if component is not None:  # a setting it was built with, else (declared since) the default
                for name, spec in specs(type(component)).items():
                    if name not in component.__dict__:
                        component.__dict__[name] = saved.get(name, spec.default)
        state["config"] = config | {"encoder_args": settings_of(modules["encoder"]), "hallucinator_args": (
            settings_of(modules["hallucinator"]) if modules.get("hallucinator") is not None else {})}
        if "head" not in state:  # pickled before heads: the prototype rule
            state["head"] = HEADS.create(config["head"], **config["head_args"])
        super().__setstate__(state)


def build_model(cfg: "TrainConfig", data: "DataSet", device: torch.device | str = "cpu",
                precision: str | None = None) -> FewShotClassifier:
    """The untrained model `cfg` describes, for `data` (its image size, channels and train-split
    normalisation), on `device`. Every generator is seeded with `cfg.seed` first, so the same
    config starts from the same weights wherever it is built (a run, a sweep child, a benchmark).
    `precision`: already resolved (default: `cfg.precision` resolved for `device`).

    ValueError where the encoder cannot take the data (an image too small for it, say)."""
    device = torch.device(device)
    seed_everything(cfg.seed)
    model = FewShotClassifier.for_data(data, cfg.model_spec(),
                                       precision=precision or resolve_precision(cfg.precision, device))
    return model.place(device)


current_state_dict = compat.current_state_dict  # a checkpoint's weights under today's names


def in_canonical_order(head: Callable[..., torch.Tensor], support: torch.Tensor, labels: torch.Tensor,
                       queries: torch.Tensor, ways: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """`head`'s answer computed on its inputs put in an order that depends on their values only,
    then put back in the caller's order: [E, S, D], [E, S], [E, Q, D] -> [E, Q, N].

    An iterative head sums over classes, support rows and queries in the order it gets them, and
    its optimiser (Adam normalises each gradient element) can turn the last bits of a sum into a
    visible change of a near-tie. Sorting classes by a projection of their mean feature, support
    rows by class then projection, and queries by projection makes the answer the same for any
    order of the support images, the classes and the queries, to the last bit."""
    e = torch.arange(support.shape[0], device=support.device)[:, None]
    direction = torch.linspace(1.0, 2.0, support.shape[-1], device=support.device, dtype=support.dtype)
    onehot = torch.nn.functional.one_hot(labels, ways).to(support.dtype)            # [E, S, N]
    class_key = ((onehot.transpose(1, 2) @ support) / onehot.sum(1).unsqueeze(-1)) @ direction  # [E, N]
    class_order = class_key.argsort(dim=-1, stable=True)                                   # canonical -> given
    rank = class_order.argsort(-1)                                                     # given -> canonical
    new_labels = rank.gather(1, labels)
    row_key = (support @ direction).argsort(dim=-1, stable=True)
    rows = row_key.gather(1, new_labels.gather(1, row_key).argsort(dim=-1, stable=True))   # by class, then value
    query_order = (queries @ direction).argsort(dim=-1, stable=True)
    out = head(support[e, rows], new_labels.gather(1, rows), queries[e, query_order], ways,
               None if weights is None else weights.gather(1, rows))
    out = out.gather(1, query_order.argsort(dim=-1)[..., None].expand(-1, -1, out.shape[-1]))  # queries back
    return out.gather(2, rank[:, None, :].expand(-1, out.shape[1], -1))  # column c: given class c


def _table_name(table, component: Any) -> str | None:
    """The name `component`'s class is registered under in `table` (None for None)."""
    if component is None:
        return None
    return next((n for n in table if isinstance(component, table[n])), type(component).__name__)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> FewShotClassifier:
    """Rebuild a model from a `.pt` checkpoint; `weights_only=True`, so loading runs no code."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and not magic.startswith(b"\x80"):  # torch.save writes a zip (or, before 1.6, a pickle)
        raise ValueError(f"{path} is not an fsl checkpoint (not a file torch.save wrote)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for "not a checkpoint"
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        if "weights only" in reason.lower() or "weights_only" in reason:
            # torch's own text advises weights_only=False: the wrong advice for an untrusted file
            reason = "it holds objects other than tensors and plain values, which fsl refuses to load"
        raise ValueError(f"{path} is not an fsl checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or "config" not in checkpoint:
        raise ValueError(f"{path} is not an fsl checkpoint (no model config in it)")
    return FewShotClassifier.from_checkpoint(checkpoint)
