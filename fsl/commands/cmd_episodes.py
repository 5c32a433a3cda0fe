"""`fsl episodes`: draw a fixed set of episodes of one split and write them as a CSV file."""

from __future__ import annotations

from pathlib import Path

from fsl.commands.inputs import load_data
from fsl.commands.options import Reporter
from fsl.config import MAX_EPISODES, MAX_SEED, TrainConfig
from fsl.data.episodes import EpisodeShape, write_episode_file
from fsl.errors import FslError, UsageError
from fsl.evaluate import sample_episodes


def write_episodes(cfg: TrainConfig, split: str, count: int, shape: EpisodeShape, seed: int, out: str,
                   reporter: Reporter = Reporter()) -> None:
    cfg.validate()
    if not 1 <= count <= MAX_EPISODES:
        raise UsageError(f"-n/--episodes must be between 1 and {MAX_EPISODES:,}, got {count:,}")
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    data = load_data(cfg, split="all" if split == "all" else "splits")
    split = "test" if split == "all" else split  # every class, as the test split
    episodes = sample_episodes(data.split(split), shape, count, seed, split, option_prefix="")
    try:
        write_episode_file(Path(out), data, split, episodes)
    except OSError as exc:
        raise FslError(f"-o/--out {out}: cannot write ({exc.strerror or exc})") from None
    reporter.echo(f"wrote {count} {shape} episodes of the {split} split of {cfg.data} to {out}")
