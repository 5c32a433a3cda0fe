"""Every bad input and fault we know of, in one table: each gets a one-line error that names the
file or option, the right exit code (2 usage, 1 data and environment), no traceback, and no run
left RUNNING in the tracking store.

A row is (id, set-up, expected exit code, a fragment of the message). The set-up builds what the
row needs under tmp_path and returns the command line, plus environment overrides for the rows
that must run in a subprocess (another tracking URI, cache folder or resource limit)."""

from __future__ import annotations

import functools
import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from PIL import Image

from fsl.cli import cli
from fsl.processes import free_port
from tests.conftest import TINY

BUDGET = [*TINY, "--epochs", "3", "--episodes-per-epoch", "4"]


# ------------------------------------------------------------------------------ set-up helpers
def image_tree(root: Path, classes: int = 6, per_class: int = 4, first: bytes | None = None,
               prefix: str = "class") -> Path:
    """A class-folders tree of small PNGs; `first` replaces the bytes of its first image."""
    for c in range(classes):
        for i in range(per_class):
            path = root / f"{prefix}{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 20), (c * 40, i * 50, 90)).save(path)
    if first is not None:
        (root / f"{prefix}0" / "0.png").write_bytes(first)
    return root


def bomb_png(path: Path, side: int = 16000) -> Path:
    """A 1-bit PNG whose header says side x side pixels (over PIL's decompression-bomb limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


def l2l_folder(root: Path, images=None, class_dict=None) -> Path:
    root.mkdir()
    for stem in ("train", "validation", "test"):
        data = {"image_data": np.zeros((8, 84, 84, 3), np.uint8) if images is None else images,
                "class_dict": {"n1": [0, 1, 2, 3], "n2": [4, 5, 6, 7]} if class_dict is None else class_dict}
        with (root / f"mini-imagenet-cache-{stem}.pkl").open("wb") as f:
            pickle.dump(data, f)
    return root


def episode_file(tmp: Path, text: str | bytes) -> Path:
    """An episode CSV (with the source record of the built-in data set at 16 px)."""
    from fsl.data import load_dataset
    from fsl.data.episodes import source_record_path

    path = tmp / "episodes.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    source_record_path(path).write_text(json.dumps({"data_set": "synthetic",
                                                    "source_id": load_dataset("synthetic", 16).source_id}))
    return path


def failed_run(tmp: Path) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("fsl") or client.get_experiment(client.create_experiment("fsl"))
    run = client.create_run(experiment.experiment_id)
    client.log_metric(run.info.run_id, "best_val_acc", 50.0)
    client.set_tag(run.info.run_id, "fsl.protocol", "{}")
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def dead_server() -> dict:
    return {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}


# Each set-up: tmp -> (args, env or None). env != None runs `python -m fsl` in a subprocess.
def cli_args(*args):
    """A row's command line as is; `{ckpt}` stands for the session's tiny trained checkpoint."""
    return lambda tmp, ckpt: ([str(ckpt) if a == "{ckpt}" else a for a in args], None)


def _outside_episodes(tmp: Path) -> Path:
    """An episode file (one 2-way episode) whose images lie outside the --data folder `tmp/d`."""
    other = image_tree(tmp / "elsewhere", classes=2, per_class=2)
    rows = ["episode,role,label,path"] + [f"0,{role},class{c},{other}/class{c}/{i}.png"
                                          for c in range(2) for i, role in enumerate(("support", "query"))]
    return _write(tmp / "e.csv", "\n".join(rows).encode() + b"\n")


ROWS = [
    # --- options checked before any work and before a run opens (issue 11, section 4)
    ("registered-model-name-slash", cli_args("protonet", *TINY[:-1], "--registered-model-name", "a/b"), 2,
     "Names cannot contain '/'"),
    ("experiment-empty", cli_args("protonet", *TINY, "--experiment", ""), 2, "--experiment must not be empty"),
    ("M-unbounded", cli_args("hallucinate", *TINY, "-M", "100000"), 2, "-M/--hallucinations must be between 0 and"),
    ("image-size-huge", cli_args("protonet", *TINY[2:], "--image-size", "100000"), 2,
     "--image-size must be between 16"),
    ("inspect-image-size-0", cli_args("data", "inspect", "synthetic", "--image-size", "0"), 2, "--image-size"),
    ("inspect-image-size-negative", cli_args("data", "inspect", "synthetic", "--image-size", "-5"), 2,
     "--image-size"),
    ("ways-1", cli_args("protonet", *TINY, "--ways", "1"), 2, "--ways must be at least 2"),
    ("test-ways-1", cli_args("protonet", *TINY, "--test-ways", "1"), 2, "--test-ways must be at least 2"),
    ("seed-huge", cli_args("protonet", *TINY, "--seed", "100000000000000000000000"), 2, "--seed must be between 0"),
    ("lr-inf", cli_args("protonet", *TINY, "--lr", "inf"), 2, "--lr must be a positive finite number"),
    ("lr-nan", cli_args("protonet", *TINY, "--lr", "nan"), 2, "--lr must be a positive finite number"),
    ("device-cuda-abc", cli_args("protonet", *TINY, "--device", "cuda:abc"), 2, "--device must be one of"),
    ("device-mps-absent", cli_args("protonet", *TINY, "--device", "mps"), 2, "MPS is not available"),
    ("sweep-m-no-values", cli_args("sweep-m", *TINY, "--values", ""), 2, "no values"),
    ("sweep-empty-shard", cli_args("sweep", *TINY, "--param", "shots=1", "--shard", "1", "--shards", "2"), 2,
     "has no grid points"),
    ("sweep-device-mps", cli_args("sweep", *TINY, "--param", "device=cpu,mps"), 2, "MPS is not available"),
    ("sweep-shards-0", cli_args("sweep", *TINY, "--param", "shots=1,2", "--shards", "0"), 2,
     "--shards must be at least 1"),
    # --- a dead tracking server fails fast for every command (section 5)
    ("dead-server-protonet", lambda tmp, ckpt: (["protonet", *TINY], dead_server()), 2, "unreachable"),
    ("dead-server-evaluate", lambda tmp, ckpt: (["evaluate", "--model", str(ckpt)], dead_server()), 2, "unreachable"),
    ("dead-server-sweep", lambda tmp, ckpt: (["sweep", *TINY, "--param", "shots=1,2"], dead_server()), 2,
     "unreachable"),
    ("dead-server-register", lambda tmp, ckpt: (["register", "--run-id", "abc"], dead_server()), 2, "unreachable"),
    # --- images and data-set layouts (section 6)
    ("unreadable-first-image", lambda tmp, ckpt: (["data", "inspect", str(image_tree(tmp / "d", first=b"no png"))],
                                                  None), 1, "cannot decode image"),
    ("decompression-bomb", lambda tmp, ckpt: (["data", "inspect", str(bomb_png(image_tree(tmp / "d") / "class1"
                                                                                / "0.png").parents[1])], None), 1,
     "cannot decode image"),
    ("no-val-split", lambda tmp, ckpt: (["protonet", *TINY, "--data", str(_train_and_test_only(tmp))], None), 1,
     "has no 'val' split"),
    ("symlink-loop", lambda tmp, ckpt: (["data", "inspect", str(_with_link(image_tree(tmp / "d"), "loop", "loop"))],
                                        None), 1, "cannot read"),
    ("dangling-symlink", lambda tmp, ckpt: (["data", "inspect", str(_with_link(image_tree(tmp / "d"), "class0/x.png",
                                                                               "/no/such/image.png"))], None), 1,
     "cannot read"),
    ("truncated-zip", lambda tmp, ckpt: (["data", "inspect", str(_truncated_zip(tmp))], None), 1,
     "not a readable .zip"),
    ("not-a-zip", lambda tmp, ckpt: (["data", "inspect", str(_write(tmp / "d.zip", b"plain text"))], None), 1,
     "not a readable .zip"),
    ("pickle-wrong-shape", lambda tmp, ckpt: (["data", "inspect", str(l2l_folder(tmp / "p", images=np.zeros(
        (8, 84, 84), np.uint8)))], None), 1, "expected uint8 images of shape [N, H, W, 3]"),
    ("pickle-row-out-of-range", lambda tmp, ckpt: (["data", "inspect", str(l2l_folder(tmp / "p", class_dict={
        "n1": [0, 1, 2, 3], "n2": [4, 5, 6, 99]}))], None), 1, "names row 99"),
    ("pickle-class-dict-not-a-dict", lambda tmp, ckpt: (["data", "inspect", str(l2l_folder(tmp / "p", class_dict=[
        "n1", "n2"]))], None), 1, "class_dict must map class names to row lists"),
    ("pickle-row-not-a-number", lambda tmp, ckpt: (["data", "inspect", str(l2l_folder(tmp / "p", class_dict={
        "n1": [0, 1, 2, "x"], "n2": [4, 5, 6, 7]}))], None), 1, "names row 'x'"),
    ("episodes-image-size-huge", cli_args("episodes", "--image-size", "100000", "-o", "/tmp/never.csv"), 2,
     "--image-size must be between 16"),
    ("episodes-seed-huge", cli_args("episodes", "--image-size", "16", "--seed", "100000000000000000000000", "-o",
                                    "/tmp/never.csv"), 2, "--seed must be between 0"),
    ("ravi-path-escapes", lambda tmp, ckpt: (["data", "inspect", str(_ravi_escaping(tmp))], None), 1,
     "outside the data set's image folders"),
    # --- episode CSV files
    ("episodes-header-only", lambda tmp, ckpt: (_evaluate_file(ckpt, episode_file(tmp, "episode,role,label,path\n")),
                                                None), 1, "has a header but no episodes"),
    ("episodes-short-row", lambda tmp, ckpt: (_evaluate_file(ckpt, episode_file(
        tmp, "episode,role,label,path\n0,support,a\n")), None), 1, "expected 4 fields"),
    ("episodes-binary", lambda tmp, ckpt: (_evaluate_file(ckpt, episode_file(tmp, bytes(range(256)) * 4)), None), 1,
     "not a text CSV"),
    ("episodes-row-too-large", lambda tmp, ckpt: (_evaluate_file(ckpt, episode_file(
        tmp, "episode,role,label,path\n0,support,a,test:0\n0,query,a,test:999999\n")), None), 1, "has rows 0 to"),
    ("episodes-row-negative", lambda tmp, ckpt: (_evaluate_file(ckpt, episode_file(
        tmp, "episode,role,label,path\n0,support,a,test:-1\n0,query,a,test:1\n")), None), 1, "has rows 0 to"),
    ("episodes-of-another-data-set", lambda tmp, ckpt: (_evaluate_file(ckpt, _other_source(tmp)), None), 2,
     "not --data 'synthetic'"),
    # --- files that are not checkpoints
    ("model-text-file", lambda tmp, ckpt: (["evaluate", "--model", str(_write(tmp / "m.pt", b"hello"))], None), 2,
     "is not an fsl checkpoint"),
    ("model-plain-dict", lambda tmp, ckpt: (["evaluate", "--model", str(_torch_dict(tmp))], None), 2,
     "is not an fsl checkpoint"),
    ("model-folder", lambda tmp, ckpt: (["evaluate", "--model", str(tmp)], None), 2, "is a folder"),
    ("predict-model-text", lambda tmp, ckpt: (["predict", "--model", str(_write(tmp / "m.pt", b"hi")), "--support",
                                               str(tmp), "--query", str(tmp)], None), 2, "is not an fsl checkpoint"),
    # --- numeric faults
    ("nan-loss", cli_args("protonet", *BUDGET, "--lr", "1e30", "--distance", "dot"), 1,
     "non-finite training loss at epoch"),
    # --- output that cannot be written
    ("episodes-out-unwritable", cli_args("episodes", "--image-size", "16", "-n", "2", "-o", "/proc/fsl/ep.csv"), 1,
     "cannot write"),
    ("predict-out-missing-folder", lambda tmp, ckpt: (_predict(tmp, ckpt, str(tmp / "no" / "out.csv")), None), 2,
     "does not exist"),
    ("predict-out-a-folder", lambda tmp, ckpt: (_predict(tmp, ckpt, str(tmp)), None), 2, "is a folder"),
    ("predict-transductive-head-no-query", lambda tmp, ckpt: (_predict(tmp, _with_head(tmp, ckpt, "tim"), query="none"),
                                                              None), 2,
     "classifies the query images together"),
    # --- tracking and cache stores
    ("tracking-folder-unwritable", lambda tmp, ckpt: (["protonet", *TINY], {
        "MLFLOW_TRACKING_URI": "sqlite:////proc/fsl/mlflow.db"}), 1, "cannot write to"),
    ("mlflow-db-not-a-database", lambda tmp, ckpt: (["protonet", *TINY], {
        "MLFLOW_TRACKING_URI": f"sqlite:///{_write(tmp / 'bad.db', b'not sqlite' * 100)}"}), 1, "bad.db"),
    ("cache-dir-unwritable", lambda tmp, ckpt: (["protonet", *TINY], {"FSL_CACHE_DIR": "/proc/fsl-cache"}), 1,
     "/proc/fsl-cache"),
    pytest.param("disk-full-cache", lambda tmp, ckpt: (["data", "inspect", "synthetic", "--image-size", "24"], {
        "FSL_CACHE_DIR": str(tmp / "cache"), "FILE_SIZE_LIMIT": 2**20}), 1, "cannot write",
        marks=pytest.mark.slow, id="disk-full-cache"),
    pytest.param("disk-full-checkpoint", lambda tmp, ckpt: (_cached_48px(["hallucinate", *TINY[2:], "--image-size",
                                                                           "48", "--hallucinator", "wang"]),
                                                             {"FILE_SIZE_LIMIT": 3 * 2**20}),
                 1, "cannot write", marks=pytest.mark.slow, id="disk-full-checkpoint"),
    # --- backbones and pre-training (issue 18)
    ("encoder-unknown", cli_args("protonet", *TINY, "--encoder", "vgg"), 2, "'vgg' is not one of 'conv4', 'resnet12'"),
    ("encoder-width-0", cli_args("protonet", *TINY, "--encoder-width", "0"), 2,
     "--encoder-arg width: conv4's width must be at least 0.015625 and at most 8, got 0.0"),
    ("encoder-width-huge", cli_args("protonet", *TINY, "--encoder-arg", "width=100"), 2,
     "--encoder-arg width: conv4's width must be at least 0.015625 and at most 8, got 100.0"),
    # W4: a width too small for one channel in the narrowest stage trained a network at chance
    ("encoder-width-degenerate", cli_args("protonet", *TINY, "--encoder-width", "1e-9"), 2,
     "--encoder-arg width: conv4's width must be at least 0.015625"),
    ("encoder-setting-unknown", cli_args("protonet", *TINY, "--encoder-arg", "depth=3"), 2,
     "--encoder-arg depth: encoder 'conv4' has no setting 'depth' (its settings: width)"),
    ("hallucinator-setting-not-a-number", cli_args("hallucinate", *TINY, "--hallucinator-arg", "momentum=fast"), 2,
     "--hallucinator-arg momentum: could not convert string to float: 'fast'"),
    ("hallucinator-setting-without-hallucinator", cli_args("protonet", *TINY, "--hallucinator-arg", "dropout=0.2"), 2,
     "No such option '--hallucinator-arg'"),
    ("recipe-unknown", cli_args("protonet", *TINY, "--recipe", "snel2017"), 2,
     "--recipe snel2017: no such recipe (shipped: omniglot, "),
    ("test-views-without-augmentation", cli_args("protonet", *TINY, "--test-views", "4"), 2,
     "--test-views draws its views from the training augmentation: give --augment omniglot or standard"),
    ("test-views-negative", cli_args("protonet", *TINY, "--augment", "omniglot", "--test-views", "-1"), 2,
     "--test-views must be between 0 and 64, got -1"),
    ("init-another-encoder", lambda tmp, ckpt: (["protonet", *TINY, "--encoder", "resnet12", "--encoder-width", "0.25",
                                                 "--init", str(ckpt)], None), 2,
     "it is conv4 on 3-channel 16px images (64-d features), this run needs resnet12 (width=0.25) on 3-channel 16px"),
    ("init-another-image-size", lambda tmp, ckpt: (["protonet", *TINY[2:], "--image-size", "20", "--init", str(ckpt)],
                                                   None), 2, "this run needs conv4 on 3-channel 20px images"),
    ("init-another-channel-count", lambda tmp, ckpt: (["protonet", *TINY, "--data", str(_split_tree(tmp)),
                                                       "--channels", "1", "--init", str(ckpt)], None), 2,
     "this run needs conv4 on 1-channel 16px images"),
    ("pretrain-one-class", lambda tmp, ckpt: (["pretrain", "--data", str(_one_training_class(tmp)), "--epochs", "1",
                                               "--test-ways", "2", "--test-queries", "1"], None), 2,
     "pre-training needs at least 2 training classes, the data set has 1"),
    ("pretrain-batch-too-large", cli_args("pretrain", "--image-size", "16", "--batch-size", "100000"), 2,
     "--batch-size 100000 is larger than the training set (3840 images)"),
    ("pretrain-epochs-negative", cli_args("pretrain", "--image-size", "16", "--epochs", "-1"), 2,
     "--epochs must be at least 0"),
    # `fsl pretrain` names its own options, not the training fields they fill
    ("pretrain-lr-nan", cli_args("pretrain", "--image-size", "16", "--lr", "nan"), 2,
     "--lr must be a positive finite number, got nan"),
    ("pretrain-batch-size-0", cli_args("pretrain", "--image-size", "16", "--batch-size", "0"), 2,
     "--batch-size must be at least 1, got 0"),
    ("epochs-0-without-pretraining", cli_args("protonet", *TINY, "--epochs", "0"), 2, "--epochs must be at least 1"),
    # --- bounds and one-line errors (issue 21, section 5)
    ("episodes-per-epoch-absurd", cli_args("protonet", *TINY, "--episodes-per-epoch", str(10**12)), 2,
     "--episodes-per-epoch must be at most 1,000,000"),
    ("test-episodes-absurd", cli_args("protonet", *TINY, "--test-episodes", str(10**11)), 2,
     "--test-episodes must be at most 1,000,000"),
    ("evaluate-test-episodes-absurd", lambda tmp, ckpt: (["evaluate", "--model", str(ckpt), "--test-episodes",
                                                          str(10**11)], None), 2, "--test-episodes must be at most"),
    ("episodes-n-absurd", cli_args("episodes", "--image-size", "16", "-n", str(10**7), "-o", "/tmp/never.csv"), 2,
     "-n/--episodes must be between 1 and 1,000,000"),
    ("experiment-too-long", cli_args("protonet", *TINY, "--experiment", "x" * 600), 2,
     "--experiment must be at most 256 printable characters, got 600"),
    ("predict-out-disk-full", lambda tmp, ckpt: (_predict(tmp, ckpt, "/dev/full"), None), 1,
     "--out /dev/full: cannot write"),
    ("model-pickled-object", lambda tmp, ckpt: (["evaluate", "--model", str(_pickled_object(tmp))], None), 2,
     "holds objects other than tensors and plain values, which fsl refuses to load"),
    ("evaluate-takes-no-training-seed", lambda tmp, ckpt: (["evaluate", "--model", str(ckpt), "--seed", "3"], None), 2,
     "No such option '--seed'"),
    ("evaluate-takes-no-precision", lambda tmp, ckpt: (["evaluate", "--model", str(ckpt), "--precision", "bf16"], None),
     2, "No such option '--precision'"),
    # --- splits and test sets (issue 23)
    ("split-ratio-not-summing-to-1", cli_args("protonet", *TINY, "--split-ratio", "0.5,0.2,0.2"), 2,
     "--split-ratio must be three shares TRAIN,VAL,TEST, each >= 0, summing to 1"),
    ("split-ratio-negative", cli_args("protonet", *TINY, "--split-ratio", "1.2,-0.2,0"), 2,
     "--split-ratio must be three shares"),
    ("split-ratio-not-numbers", cli_args("data", "inspect", "synthetic", "--split-ratio", "a,b,c"), 2,
     "--split-ratio must be three shares"),
    ("split-ratio-on-synthetic", cli_args("protonet", *TINY, "--split-ratio", "0.8,0.1,0.1"), 2,
     "--split-ratio: the built-in synthetic set has fixed splits"),
    ("split-ratio-on-split-folders", lambda tmp, ckpt: (["protonet", *TINY, "--data", str(_split_tree(tmp)),
                                                         "--split-ratio", "0.8,0.1,0.1"], None), 2,
     "--split-ratio: the split-folders format does not use it"),
    ("split-ratio-without-training-classes", lambda tmp, ckpt: (["protonet", *TINY, "--data", str(image_tree(
        tmp / "d")), "--split-ratio", "0,0,1"], None), 2, "--split-ratio 0,0,1: training needs train and val classes"),
    ("split-file-unknown-class", lambda tmp, ckpt: (["data", "inspect", str(image_tree(tmp / "d")), "--split-file",
                                                     str(_write(tmp / "s.txt", b"train,class0\ntest,nope\n"))], None),
     2, "1 class(es) not in the data, e.g. 'nope'"),
    ("split-file-empty", lambda tmp, ckpt: (["data", "inspect", str(image_tree(tmp / "d")), "--split-file",
                                             str(_write(tmp / "s.txt", b"# nothing yet\n"))], None),
     2, "lists no classes (expected 'split,class' lines)"),
    ("init-not-a-checkpoint", lambda tmp, ckpt: (["protonet", *TINY, "--init",
                                                  str(_write(tmp / "passwd", b"root:x:0\n"))], None), 2,
     "not an fsl checkpoint (not a file torch.save wrote)"),
    # --- heads (issue 33)
    ("head-unknown", cli_args("protonet", *TINY, "--head", "svm"), 2, "'svm' is not one of 'prototype', 'logistic'"),
    ("head-setting-out-of-range", cli_args("protonet", *TINY, "--head", "logistic", "--head-arg", "steps=0"), 2,
     "--head-arg steps: logistic's steps must be at least 1 and at most 100000, got 0"),
    ("evaluate-head-unknown", cli_args("evaluate", "--model", "{ckpt}", "--image-size", "16", "--head",
                                       "prototype,svm"), 2,
     "--head must be one of prototype, logistic, bd-cspn, laplacian, tim, pt-map, got 'svm'"),
    ("evaluate-head-setting-of-no-listed-head", cli_args("evaluate", "--model", "{ckpt}", "--image-size", "16",
                                                         "--head", "logistic", "--head-arg", "knn=5"), 2,
     "--head-arg knn: none of the heads (logistic) has this setting"),
    ("power-on-resnet12-features", cli_args("protonet", *TINY, "--encoder", "resnet12", "--encoder-arg", "width=0.25",
                                            "--feature-transform", "power"), 2,
     "--feature-transform power needs features >= 0, and --encoder resnet12 (leaky ReLU) makes them negative"),
    ("pt-map-on-resnet12-features", cli_args("protonet", *TINY, "--encoder", "resnet12", "--head", "pt-map"), 2,
     "--head pt-map power-transforms the features, which needs them >= 0, and the resnet12 encoder (leaky ReLU)"),
    ("evaluate-pt-map-on-a-resnet12-model", lambda tmp, ckpt: (["evaluate", "--model", str(_resnet12(tmp)),
                                                                "--head", "prototype,pt-map"], None), 2,
     "--head pt-map power-transforms the features, which needs them >= 0, and the resnet12 encoder (leaky ReLU)"),
    ("diversity-weight-on-calibrated", cli_args("hallucinate", *TINY, "--hallucinator", "calibrated",
                                                "--diversity-weight", "0.3"), 2,
     "--diversity-weight: hallucinator 'calibrated' has no setting 'diversity_weight' (its settings: momentum)"),
    # --- silent results made loud (issue 36): a warning line, exit code 0
    ("evaluate-split-all-of-the-training-data", cli_args("evaluate", "--model", "{ckpt}", "--image-size", "16",
                                                         "--split", "all", "--test-episodes", "3", "--test-queries",
                                                         "3"), 0,
     "tested classes have the names of classes the model was trained on"),
    ("laplacian-on-features-without-cl2n", cli_args("evaluate", "--model", "{ckpt}", "--image-size", "16", "--head",
                                                    "prototype,laplacian", "--test-episodes", "3", "--test-queries",
                                                    "3"), 0,
     "head laplacian expects cl2n features, as its reference, and this model's are 'none'"),
    ("predict-laplacian-without-cl2n", lambda tmp, ckpt: (_predict(tmp, _with_head(tmp, ckpt, "laplacian")), None), 0,
     "(use a model trained with --feature-transform cl2n)"),
    ("episode-file-outside-data", lambda tmp, ckpt: (["evaluate", "--model", str(ckpt), "--data",
                                                      str(image_tree(tmp / "d")), "--episodes",
                                                      str(_outside_episodes(tmp))], None), 0,
     "image file(s) of"),
    ("split-file-class-twice", lambda tmp, ckpt: (["data", "inspect", str(image_tree(tmp / "d")), "--split-file",
                                                   str(_write(tmp / "s.txt", b"train,class0\ntest,class0\n"))], None),
     2, "line 2: class 'class0' is listed twice"),
    ("test-data-at-another-channel-count", lambda tmp, ckpt: (["protonet", *TINY, "--data", str(_split_tree(tmp)),
                                                               "--channels", "1", "--test-data", "synthetic"], None), 2,
     "--test-data synthetic: --channels: the synthetic data set is RGB"),
    ("split-all-for-training", cli_args("protonet", *TINY, "--split", "all"), 2, "No such option '--split'"),
    # --- options of protonet, hallucinate and the sweeps
    ("test-ways-above-val-classes", cli_args("protonet", *TINY, "--test-ways", "17"), 2,
     "--test-ways must be between 2 and 16"),
    ("ways-above-train-classes", cli_args("protonet", *TINY, "--ways", "70"), 2, "--ways must be between 2 and 64"),
    ("shots-plus-queries-too-many", cli_args("protonet", *TINY, "--shots", "50", "--queries", "15"), 2,
     "--shots + --queries must be at most 60"),
    ("distance-unknown", cli_args("protonet", *TINY, "--distance", "manhattan"), 2, "'--distance'"),
    ("data-missing", cli_args("protonet", *TINY, "--data", "/no/such/folder"), 2, "/no/such/folder"),
    ("episodes-per-epoch-0", cli_args("protonet", *TINY, "--episodes-per-epoch", "0"), 2,
     "--episodes-per-epoch must be at least 1"),
    ("test-episodes-negative", cli_args("protonet", *TINY, "--test-episodes", "-3"), 2,
     "--test-episodes must be at least 1"),
    ("queries-0", cli_args("protonet", *TINY, "--queries", "0"), 2, "--queries must be at least 1"),
    ("M-negative", cli_args("hallucinate", *TINY, "-M", "-1"), 2,
     "-M/--hallucinations must be between 0 and 1000"),
    ("hallucinator-unknown", cli_args("hallucinate", *TINY, "--hallucinator", "gan"), 2, "'--hallucinator'"),
    ("seeds-empty", cli_args("sweep", *TINY, "--param", "shots=1,2", "--seeds", ""), 2, "--seeds"),
    ("seeds-repeated", cli_args("sweep", *TINY, "--param", "shots=1,2", "--seeds", "0,0"), 2, "must not repeat"),
    ("seeds-not-integers", cli_args("sweep", *TINY, "--param", "shots=1,2", "--seeds", "0,b"), 2,
     "--seeds must be comma-separated integers"),
    ("seeds-and-seed-axis", cli_args("sweep", *TINY, "--param", "seed=0,1", "--seeds", "0,1"), 2,
     "--seeds and --param seed"),
    ("baseline-not-a-point", cli_args("sweep", *TINY, "--method", "hallucinate", "--param", "M=0,10",
                                      "--baseline", "M=5"), 2, "not a point of the grid"),
    ("baseline-not-an-axis", cli_args("sweep", *TINY, "--param", "shots=1,2", "--baseline", "ways=5"), 2,
     "--baseline must be FIELD=VALUE"),
    ("sweep-m-baseline-not-a-point", cli_args("sweep-m", *TINY, "--values", "0,2", "--baseline", "M=3"), 2,
     "not a point of the grid"),
    ("sweep-m-seeds-not-integers", cli_args("sweep-m", *TINY, "--values", "0,2", "--seeds", "1,x"), 2, "--seeds"),
    # --- registry
    ("predict-unregistered-model", lambda tmp, ckpt: (_predict(tmp, "models:/no-such-model@champion"), None), 2,
     "no-such-model"),
    ("predict-unknown-alias", lambda tmp, ckpt: (_predict(tmp, _registered("fsl-protonet") + "@nosuchalias"), None),
     2, "nosuchalias"),
    ("predict-missing-run", lambda tmp, ckpt: (_predict(tmp, "runs:/0123456789abcdef/checkpoints/best.pt"), None), 2,
     "runs:/0123456789abcdef"),
    ("register-a-failed-run", lambda tmp, ckpt: (["register", "--run-id", failed_run(tmp)], None), 2, "is FAILED"),
]


def _cached_48px(args: list[str]) -> list[str]:
    """The built-in data at 48 px, decoded into the cache beforehand: the 3 MiB file-size limit
    then first bites on the 9 MB checkpoint of a 576-d hallucinator, not on the data cache."""
    from fsl.data import load_dataset

    load_dataset("synthetic", 48)
    return args


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _with_link(root: Path, name: str, target: str) -> Path:
    os.symlink(target, root / name)
    return root


def _train_and_test_only(tmp: Path) -> Path:
    image_tree(tmp / "d" / "train", prefix="train")
    image_tree(tmp / "d" / "test", prefix="test")
    return tmp / "d"


def _split_tree(tmp: Path) -> Path:
    for split in ("train", "val", "test"):
        image_tree(tmp / "d" / split, classes=5, prefix=split)
    return tmp / "d"


def _one_training_class(tmp: Path) -> Path:
    image_tree(tmp / "d" / "train", classes=1, prefix="train")
    image_tree(tmp / "d" / "val", classes=2, prefix="val")
    image_tree(tmp / "d" / "test", classes=2, prefix="test")
    return tmp / "d"


def _truncated_zip(tmp: Path) -> Path:
    import zipfile

    archive = tmp / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(image_tree(tmp / "d").rglob("*.png")):
            zf.write(p, p.relative_to(tmp))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return archive


def _ravi_escaping(tmp: Path) -> Path:
    root = tmp / "ravi"
    (root / "images").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (root / f"{split}.csv").write_text("filename,label\n../../etc/passwd,n1\n")
    return root


def _evaluate_file(ckpt: Path, path: Path) -> list[str]:
    return ["evaluate", "--model", str(ckpt), "--episodes", str(path), "--image-size", "16"]


def _other_source(tmp: Path) -> Path:
    from fsl.data.episodes import source_record_path

    path = episode_file(tmp, "episode,role,label,path\n0,support,a,test:0\n0,query,a,test:1\n")
    source_record_path(path).write_text(json.dumps({"data_set": "mini", "source_id": "0123"}))
    return path


class ArbitraryObject:
    """Any class: weights-only loading refuses to import it."""


def _pickled_object(tmp: Path) -> Path:
    """A torch file holding an object that weights-only loading refuses (torch's own message
    then advises weights_only=False)."""
    import torch

    torch.save({"config": ArbitraryObject()}, tmp / "object.pt")
    return tmp / "object.pt"


def _resnet12(tmp: Path) -> Path:
    """An untrained ResNet-12 (x1/16) checkpoint at 16 px: what a saved ResNet-12 model looks like."""
    import torch

    from fsl.config import TrainConfig
    from fsl.data import load_dataset
    from fsl.models.classifier import build_model

    cfg = TrainConfig(image_size=16, encoder="resnet12", encoder_args={"width": 0.0625}, precision="fp32")
    model = build_model(cfg, load_dataset("synthetic", image_size=16), torch.device("cpu"), "fp32")
    torch.save(model.checkpoint(), tmp / "resnet12.pt")
    return tmp / "resnet12.pt"


def _torch_dict(tmp: Path) -> Path:
    import torch

    torch.save({"weights": torch.zeros(3)}, tmp / "dict.pt")
    return tmp / "dict.pt"


def _predict(tmp: Path, model: Path | str, out: str | None = None, query: str = "class0") -> list[str]:
    """`fsl predict` of the images of `tmp/query/<query>` (a folder of one image; "none": of none)."""
    image_tree(tmp / "support", classes=2, per_class=1)
    image_tree(tmp / "query", classes=1, per_class=1)
    (tmp / "query" / "none").mkdir()
    return ["predict", "--model", str(model), "--support", str(tmp / "support"), "--query",
            str(tmp / "query" / query), *(["--out", out] if out else [])]


def _with_head(tmp: Path, checkpoint: Path, head: str) -> Path:
    """The checkpoint's model saved with `head` as its own (what `--head` on a training run saves)."""
    import torch

    from fsl.models.classifier import load_checkpoint

    torch.save(load_checkpoint(checkpoint).set_head(head).checkpoint(), tmp / f"{head}.pt")
    return tmp / f"{head}.pt"


def _registered(name: str) -> str:
    """A registered model with no versions (so no aliases) in the test's store: models:/<name>."""
    MlflowClient().create_registered_model(name)
    return f"models:/{name}"


def _limit_files(limit: int) -> None:
    """In the child, before exec: writes past `limit` bytes fail with EFBIG, as on a full disk."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


# The rows that run `python -m fsl` in a subprocess (another environment): the slow lane's.
SUBPROCESS_ROWS = {"dead-server-protonet", "dead-server-evaluate", "dead-server-sweep", "dead-server-register",
                   "tracking-folder-unwritable", "mlflow-db-not-a-database", "cache-dir-unwritable",
                   "disk-full-cache", "disk-full-checkpoint"}


def run_row(setup, tmp: Path, ckpt: Path, row_id: str) -> tuple[int, str]:
    """Exit code and everything printed."""
    args, env = setup(tmp, ckpt)
    assert (env is not None) == (row_id in SUBPROCESS_ROWS), f"{row_id}: keep SUBPROCESS_ROWS up to date"
    if env is None:
        result = CliRunner().invoke(cli, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        return result.exit_code, result.output
    limit = env.pop("FILE_SIZE_LIMIT", None)
    out = subprocess.run([sys.executable, "-m", "fsl", *args], env=os.environ | env, capture_output=True, text=True,
                         timeout=240, preexec_fn=functools.partial(_limit_files, limit) if limit else None)
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize("row_id, setup, code, fragment", [
    row if hasattr(row, "marks") else
    pytest.param(*row, id=row[0], marks=[pytest.mark.slow] * (row[0] in SUBPROCESS_ROWS)) for row in ROWS])
def test_a_bad_input_gets_one_line_the_right_exit_code_and_leaves_no_run(tracking, tmp_path, trained_checkpoint,
                                                                         row_id, setup, code, fragment):
    exit_code, output = run_row(setup, tmp_path, trained_checkpoint, row_id)
    lines = [line for line in output.splitlines() if line.startswith("Error:" if code else "warning:")]
    assert exit_code == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len(lines) == 1 and fragment in lines[0], output[-3000:]
    assert "weights_only=False" not in output  # never the advice to load an untrusted file unsafely
    client = MlflowClient()
    running = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 filter_string="attributes.status = 'RUNNING'")
    assert running == []
