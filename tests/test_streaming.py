"""Evaluations of any size: an episode file is read into arrays and scored by shape, each distinct
image encoded once, with the numbers each episode alone gives; an evaluation stops KILLED."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from fsl.data.episode_table import compile_episode_file
from fsl.data.episodes import episode_file_images, read_episode_file
from fsl.errors import DataError
from fsl.evaluate import evaluate_table
from fsl.models.noise import episode_keys, label_ids


def uneven_file(path: Path, episodes: int = 12) -> Path:
    """Episodes of 2 to 4 ways with uneven shots and queries, rows of the synthetic test split
    (`test:<row>`), with rows of one episode interleaved with another's."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for e in range(episodes):
        ways = 2 + e % 3
        for c in range(ways):
            label = f"class{(e + 3 * c) % 20}"
            base = ((e + 3 * c) % 20) * 60
            for k in range(1 + (c + e) % 2):
                rows.append([e, "support", label, f"test:{base + k}"])
            for q in range(1 + (c * e) % 3):
                rows.append([e, "query", label, f"test:{base + 10 + int(torch.randint(0, 40, (1,), generator=g))}"])
    rows.insert(3, rows.pop())  # a row of the last episode among the first's: episodes need not be contiguous
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["episode", "role", "label", "path"], *rows])
    return path


@pytest.mark.parametrize("hallucinator", [None, "calibrated"])
def test_a_file_scores_as_each_of_its_episodes_alone(hallucinator, tiny_dataset, tmp_path, monkeypatch):
    from fsl.models.classifier import FewShotClassifier

    path = uneven_file(tmp_path / "e.csv")
    monkeypatch.setattr("fsl.data.episodes._check_source", lambda path, dataset: None)  # rows of this data set
    torch.manual_seed(0)
    model = FewShotClassifier.for_data(tiny_dataset, hallucinator=hallucinator, M=4 if hallucinator else 0).eval()
    if hallucinator:
        for name, value in (("grand_mean", 0.3), ("within_var", 0.2), ("between_var", 0.05)):
            getattr(model.hallucinator, name).fill_(value)
    table = compile_episode_file(path)
    assert table.count == 12 and len(table.groups) > 3  # several shapes
    images = episode_file_images(table, tiny_dataset, 16, 3)
    streamed = evaluate_table(model, table, images, noise_seed=5, encode_batch=7).accs
    alone = []
    for i, episode in enumerate(read_episode_file(path, tiny_dataset)):  # the per-episode reference
        keys = episode_keys(5, [i], label_ids(episode.class_names)[None])
        logits = model.episode_logits(episode.support_images, episode.support_labels, episode.query_images,
                                      episode.ways, keys=keys)
        alone.append(float((logits.argmax(-1) == episode.query_labels).sum()) * 100 / len(episode.query_labels))
    assert list(streamed) == alone


def test_a_bad_episode_file_is_named_with_its_line_or_episode(tmp_path):
    bad = {"role": "episode,role,label,path\n0,suport,a,x.png\n", "fields": "episode,role,label,path\n0,support,a\n",
           "no-query": "episode,role,label,path\n0,support,a,x.png\n",
           "unknown": "episode,role,label,path\n7,support,a,x.png\n7,query,b,y.png\n"}
    messages = {"role": ":2: role must be support or query, got 'suport'", "fields": ":2: expected 4 fields",
                "no-query": "episode 0: has no query rows",
                "unknown": "episode 7: queries use classes missing from its support: ['b']"}
    for name, text in bad.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(text)
        with pytest.raises(DataError, match=messages[name].replace("[", r"\[").replace("]", r"\]")):
            compile_episode_file(path)


def test_blank_lines_of_an_episode_file_are_skipped_as_before(tmp_path):
    """A file with blank lines (an editor's trailing newline, a hand-made separator) reads as the
    same file without them, as csv.DictReader read these files before the streaming evaluation."""
    rows = "0,support,a,x.png\n0,query,a,y.png\n0,support,b,z.png\n0,query,b,w.png\n"
    plain, blank = tmp_path / "plain.csv", tmp_path / "blank.csv"
    plain.write_text("episode,role,label,path\n" + rows)
    blank.write_text("episode,role,label,path\n\n" + rows.replace("y.png\n", "y.png\n\n") + "\n\n")
    a, b = compile_episode_file(plain), compile_episode_file(blank)
    assert b.count == a.count == 1 and b.refs == a.refs and b.labels == a.labels and b.rows == a.rows == 4


def rss_and_seconds(args: list[str], cwd: Path) -> dict:
    """Peak RSS (MiB) and wall seconds of `fsl <args>` in a fresh process, and its output."""
    code = "\n".join([
        "import resource, sys, time, json", "from fsl.cli import main", "sys.argv = ['fsl'] + json.loads(sys.argv[1])",
        "t = time.perf_counter()", "try:", "    main()", "except SystemExit as e:", "    code = e.code", "else:",
        "    code = 0", "print(json.dumps({'rc': code, 's': time.perf_counter() - t, "
        "'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)"])
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    return json.loads(done.stderr.strip().splitlines()[-1]) | {"out": done.stdout}


@pytest.mark.slow
def test_ten_thousand_episodes_stream_in_bounded_time_and_memory(tracking, trained_checkpoint, tmp_path):
    """The scaled check of the 10^5-episode target: 10^4 2-way 1-shot 1-query episodes at 16 px
    within a minute, and at most 150 MiB above the peak of a 100-episode evaluation."""
    from fsl.data import load_dataset
    from fsl.data.episodes import EpisodeShape, write_episode_file
    from fsl.evaluate import sample_episodes

    common = ["evaluate", "--model", str(trained_checkpoint), "--image-size", "16"]
    data, files = load_dataset("synthetic", image_size=16), {}
    for n in (100, 10_000):  # as `fsl episodes` writes them, in this process
        files[n] = tmp_path / f"e{n}.csv"
        write_episode_file(files[n], data, "test", sample_episodes(data.split("test"), EpisodeShape(2, 1, 1), n, 0,
                                                                   "test"))
    small = rss_and_seconds([*common, "--episodes", str(files[100])], tmp_path)
    large = rss_and_seconds([*common, "--episodes", str(files[10_000])], tmp_path)
    assert small["rc"] == 0 and large["rc"] == 0, large["out"][-2000:]
    assert "reading e10000.csv" in large["out"] and "episodes scored: 10,000/10,000" in large["out"]
    assert large["s"] < 60, large
    assert large["rss"] - small["rss"] < 150, (small["rss"], large["rss"])


@pytest.mark.slow
def test_sigterm_ends_an_evaluation_killed(tracking, trained_checkpoint):
    process = subprocess.Popen([sys.executable, "-m", "fsl", "evaluate", "--model", str(trained_checkpoint),
                                "--image-size", "16", "--test-ways", "2", "--test-queries", "1",
                                "--test-episodes", "400000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client, deadline = MlflowClient(tracking), time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            running = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                       if r.info.status == "RUNNING"]
            if running:
                break
            assert process.poll() is None, process.communicate()[1][-2000:]
            time.sleep(0.2)
        assert running, "no evaluation run opened"
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143
    assert client.get_run(running[0].info.run_id).info.status == "KILLED"
