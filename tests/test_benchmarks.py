"""Smoke tests of the benchmark scripts at a tiny size: they run and report both paths."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_replicated_study_without_mlflow_pairs_seeds_and_tests_calibrated_m_from_one_model(monkeypatch, tmp_path):
    import fsl.commands.cmd_train
    from benchmarks.hallucination import markdown, replicated_study, rows_from_logs, study_plan
    from fsl.data import load_dataset

    real_train, trained = fsl.commands.cmd_train.train, []

    def recording(model, data, cfg, *args, **kwargs):
        trained.append((cfg.hallucinator, cfg.M, cfg.seed))
        return real_train(model, data, cfg, *args, **kwargs)

    monkeypatch.setattr(fsl.commands.cmd_train, "train", recording)

    plan = study_plan(8, seeds=(0, 1), kinds=("calibrated", "wang"), ms=(0, 2, 4), test_episodes=5,
                      image_size=16, queries=3, test_queries=3, val_episodes=3, precision="fp32")
    lines = []
    result = replicated_study(plan, load_dataset("synthetic", image_size=16), device_name="cpu", log=lines.append)
    children = {(c["point"], c["seed"]): c for c in result["children"]}
    assert len(children) == 2 * 5  # ProtoNet, calibrated M=2, 4, wang M=2, 4 per seed
    assert sorted(trained, key=str) == sorted([(None, 0, s) for s in (0, 1)] + [("calibrated", 4, s) for s in (0, 1)]
                                              + [("wang", m, s) for m in (2, 4) for s in (0, 1)], key=str)
    for seed in (0, 1):  # calibrated M=2 is the M=4 model: the same encoder, the same generator-off accuracy
        assert children["hallucinator=calibrated,M=2", seed]["test_acc_no_hallucination"] == \
            children["hallucinator=calibrated,M=4", seed]["test_acc_no_hallucination"]
    rows = {r["point"]: r for r in result["rows"]}
    wang = rows["hallucinator=wang,M=4"]
    diffs = [children["hallucinator=wang,M=4", s]["test_acc"] - children["hallucinator=none,M=0", s]["test_acc"]
             for s in (0, 1)]
    assert wang["diff_vs_baseline"] == pytest.approx(sum(diffs) / 2)
    assert wang["diff_vs_baseline_ci95"] == pytest.approx(12.706204736 * abs(diffs[0] - diffs[1]) / 2)
    assert 0 <= wang["halluc_spread_ratio"] and 0 <= wang["halluc_mix_weight"] <= 1
    assert "hallucinator=calibrated,M=2" in markdown(result["rows"])
    assert json.loads(lines[-1])["environment"]["precision"] == "fp32"

    # The table again from the logs of a study split over two calls (ProtoNet in both, as when
    # a call is cut short and the rest run again), and a log that contradicts another is refused.
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_text("\n".join(lines[:6]) + "\n")
    second.write_text("\n".join(line for line in lines[6:] if "hallucinator=none" not in line) + "\n"
                      + "\n".join(line for line in lines if "hallucinator=none" in line) + "\n")
    assert rows_from_logs(plan, [first, second])["rows"] == result["rows"]
    partial = rows_from_logs(plan, [first])["rows"]
    assert sum(r["n_seeds"] for r in partial) == 6
    bad = json.loads(lines[0]) | {"test_acc": -1.0}
    second.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="another log"):
        rows_from_logs(plan, [first, second])


def test_the_recipe_table_pairs_each_recipe_with_protonet_at_its_shots_seed_by_seed():
    from benchmarks.recipe_study import RECIPE_PARAMS, recipe_of, table

    def recipe(**changes):
        return recipe_of({k: str(v) for k, v in changes.items()})

    protonet, tuned = recipe(), recipe(pretrain_epochs=10, epochs=0, feature_transform="cl2n")
    protonet5, tuned5 = recipe(test_shots=5), recipe(test_shots=5, pretrain_epochs=10, epochs=0)
    results = {protonet: {0: (60.0, 5.0), 1: (62.0, 5.0), 2: (61.0, 5.0)},
               tuned: {0: (70.0, 2.0), 1: (73.0, 2.0), 2: (70.0, 3.0)},
               protonet5: {0: (80.0, 5.0), 1: (81.0, 5.0)}, tuned5: {0: (79.0, 2.0), 1: (79.0, 2.0)}}
    rows = {r["recipe"]: r for r in table(results)}
    assert len(RECIPE_PARAMS) == len(protonet)
    row = rows["pretrain_epochs=10, epochs=0, feature_transform=cl2n"]
    # differences 10, 11, 9: mean 10, sd 1, t(2) = 4.303 -> half-width 4.303 / sqrt(3)
    assert row["diff"] == pytest.approx(10.0) and row["diff_ci95"] == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5)
    assert row["excludes_0"] and row["minutes"] == pytest.approx(7 / 3)
    five = rows["pretrain_epochs=10, epochs=0, test_shots=5"]  # paired with the 5-shot ProtoNet, not the 1-shot one
    assert five["diff"] == pytest.approx(-1.5)
    assert "diff" not in rows["ProtoNet (today)"] and "diff" not in rows["test_shots=5"]
    # a backbone on top of the best recipe is also paired with the best recipe
    resnet = recipe(encoder="resnet12", encoder_width=0.25, pretrain_epochs=10, epochs=0, feature_transform="cl2n")
    rows = {r["recipe"]: r for r in table(results | {resnet: {0: (71.0, 4.0), 1: (74.0, 4.0), 2: (70.0, 4.0)}})}
    deeper = rows["encoder=resnet12, encoder_width=0.25, pretrain_epochs=10, epochs=0, feature_transform=cl2n"]
    assert deeper["best_diff"] == pytest.approx(2 / 3) and deeper["diff"] == pytest.approx(32 / 3)
    assert "best_diff" not in rows["pretrain_epochs=10, epochs=0, feature_transform=cl2n"]


def test_the_omniglot_study_table_pairs_each_recipe_with_today_seed_by_seed(tmp_path):
    from benchmarks.omniglot import study_table

    def result(acc5, acc20, cl2n=None):
        out = {"train_seconds": 600.0, "test_5way_1shot": {"acc": acc5}, "test_20way_1shot": {"acc": acc20}}
        return out | ({"test_20way_1shot_cl2n": {"acc": cl2n}} if cl2n is not None else {})

    for name, seed, accs in [("today", 0, (95.0, 84.0, 83.0)), ("today", 1, (95.5, 85.0, 83.5)),
                             ("strokes", 0, (96.0, 86.0)), ("strokes", 1, (96.0, 88.0))]:
        (tmp_path / f"{name}_s{seed}.json").write_text(json.dumps(result(*accs)))
    rows = {tuple(cell.strip() for cell in line.split("|")[1:4]): line for line in study_table(tmp_path).splitlines()}
    # 20-way: differences 2 and 3: mean 2.5, sd 0.707, t(1) = 12.706 -> half-width 12.706 * 0.707 / sqrt(2)
    assert "+2.50 ± 6.35 |" in rows["strokes", "0,1", "20-way"]
    assert "+0.75 ± 3.18 |" in rows["strokes", "0,1", "5-way"]
    assert "-1.25 ± 3.18 |" in rows["today", "0,1", "20-way, CL2N"]  # CL2N of today's own models, paired
    assert "| — |" in rows["today", "0,1", "20-way"] and "| 10.0 |" in rows["today", "0,1", "20-way"]


@pytest.mark.slow
def test_the_gpu_floor_script_dry_runs_every_part_on_the_cpu(tmp_path):
    """`benchmarks/gpu_floor.sh --cpu-smoke`: what a lent GPU's first minutes run, at toy sizes,
    the speed benchmark (`benchmarks.bench --tiny`) among them, both of its paths."""
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_floor.sh"), "--cpu-smoke"], cwd=ROOT,
                          env=os.environ | {"OUT": str(tmp_path), "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=900)
    parts = (tmp_path / "parts.txt").read_text().splitlines()
    assert parts == [f"{p}: exit 0" for p in ("smoke", "trainer", "batched", "resnet12", "profile", "bench")], \
        done.stdout[-3000:]
    assert json.loads((tmp_path / "batched.json").read_text())["episodes_per_s"]["E2_batched"] > 0
    trained = json.loads((tmp_path / "trainer.json").read_text())
    assert trained["compiled"] and trained["graphs"] > 0  # the compiled step ran (Dynamo's eager backend)
    assert "Self CPU time total" in (tmp_path / "profile.json").read_text()
    bench = json.loads((tmp_path / "bench_floor.json").read_text())
    for key in ("5way", "30way"):
        row = bench["train"][key]
        assert row["product"]["median"] > 0 and row["reference"]["median"] > 0 and row["ratio"] > 0
    assert bench["eval"]["5way"]["ratio"] > 0 and bench["floor"]["matmul_tflops"] > 0
    assert set(bench["first_episode_s"]) == {"product_cold", "product_warm", "reference"}
    assert "train 30-way 1-shot (episodes/s)" in (tmp_path / "bench.log").read_text()
