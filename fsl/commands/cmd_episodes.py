"""`fsl episodes`: draw a fixed set of episodes of one split and write them as a CSV file."""

from __future__ import annotations

from pathlib import Path

from fsl.commands.inputs import load_data
from fsl.commands.options import Reporter
from fsl.config import EpisodeFileConfig
from fsl.data.episodes import write_episode_file
from fsl.errors import FslError
from fsl.evaluate import sample_episodes


def write_episodes(cfg: EpisodeFileConfig, out: str, reporter: Reporter = Reporter()) -> None:
    cfg.validate()
    data = load_data(cfg, split="all" if cfg.split == "all" else "splits")
    split = "test" if cfg.split == "all" else cfg.split  # every class, as the test split
    shape, count = cfg.shape, cfg.count
    episodes = sample_episodes(data.split(split), shape, count, cfg.seed, split, option_prefix="")
    try:
        write_episode_file(Path(out), data, split, episodes)
    except OSError as exc:
        raise FslError(f"-o/--out {out}: cannot write ({exc.strerror or exc})") from None
    reporter.echo(f"wrote {count} {shape} episodes of the {split} split of {cfg.data} to {out}")
