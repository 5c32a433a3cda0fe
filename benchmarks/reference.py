"""The reference path: what the original implementation and most public few-shot code do.

Per episode, a DataLoader worker opens and decodes the episode's JPEG files with PIL, applies
torchvision transforms (Resize, ToTensor, Normalize) and stacks them; the main process copies
the batch to the device and trains the same Conv-4 ProtoNet with Adam, in fp32, NCHW. It is a
yardstick for benchmarks/bench.py and never a product option.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F

from fsl.models.distances import l2, prototypes
from fsl.models.encoders import Conv4


class EpisodeFiles(torch.utils.data.Dataset):
    """Item i is episode i: ways x (shots + queries) image files decoded with PIL."""

    def __init__(self, root: Path, ways: int, shots: int, queries: int, size: int, seed: int = 0,
                 length: int = 10**9) -> None:
        import torchvision.transforms as T

        self.classes = sorted(p for p in Path(root).iterdir() if p.is_dir())
        self.files = [sorted(c.iterdir()) for c in self.classes]
        self.ways, self.shots, self.queries, self.seed, self.length = ways, shots, queries, seed, length
        self.transform = T.Compose([T.Resize((size, size)), T.ToTensor(),
                                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        rng = random.Random(self.seed * 1_000_003 + index)
        support, query = [], []
        for c in rng.sample(range(len(self.classes)), self.ways):
            picked = rng.sample(self.files[c], self.shots + self.queries)
            images = [self.transform(Image.open(p).convert("RGB")) for p in picked]
            support += images[: self.shots]
            query += images[self.shots:]
        return torch.stack(support + query)  # [ways*(shots+queries), 3, S, S]


def loader(root: Path, ways: int, shots: int, queries: int, size: int, workers: int, seed: int = 0):
    dataset = EpisodeFiles(root, ways, shots, queries, size, seed)
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                                       prefetch_factor=2 if workers > 0 else None)


class ReferenceTrainer:
    """The same model, loss and optimiser as fsl, fp32, default memory format."""

    def __init__(self, size: int, ways: int, shots: int, queries: int, device: torch.device, lr: float = 1e-3):
        torch.manual_seed(0)
        self.encoder = Conv4(3, size).to(device)
        self.optimizer = torch.optim.Adam(self.encoder.parameters(), lr=lr)
        self.ways, self.shots, self.device = ways, shots, device
        self.support_labels = torch.arange(ways, device=device).repeat_interleave(shots)
        self.query_labels = torch.arange(ways, device=device).repeat_interleave(queries)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True)
        features = self.encoder(x)
        n_support = self.ways * self.shots
        protos = prototypes(features[:n_support], self.support_labels, self.ways)
        return -l2(features[n_support:], protos)

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        self.encoder.train()
        loss = F.cross_entropy(self.logits(batch), self.query_labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()  # as such code does: a host sync per step, for logging

    @torch.no_grad()
    def accuracy(self, batch: torch.Tensor) -> float:
        self.encoder.eval()
        return (self.logits(batch).argmax(-1) == self.query_labels).float().mean().item()
