"""Replicated sweeps: planning (fsl.sweeps), aggregation by hand, and `fsl sweep` end to end."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from fsl import sweeps
from fsl.cli import cli
from fsl.config import TrainConfig
from fsl.diagnostics import METRICS
from fsl.errors import UsageError
from tests.conftest import TINY, all_runs

WANG = TrainConfig(hallucinator="wang", M=100)


def names(points):
    return [p.name for p in points]


# ------------------------------------------------------------------------------ planning
def test_m_zero_points_of_every_hallucinator_are_one_protonet_point():
    grid = {"hallucinator": ["wang", "improved"], "M": [0, 10, 50]}
    points = sweeps.expand_grid(WANG, grid)
    assert names(points) == ["hallucinator=none,M=0", "hallucinator=wang,M=10", "hallucinator=wang,M=50",
                             "hallucinator=improved,M=10", "hallucinator=improved,M=50"]
    protonet = sweeps.point_config(WANG, points[0])
    assert protonet.hallucinator is None and protonet.M == 0 and protonet.method == "protonet"
    # wang's M=0 and improved's M=0 are the same run: the same logged params
    for kind in ("wang", "improved"):
        cfg = sweeps.point_config(WANG, sweeps.Point((("hallucinator", kind), ("M", 0))))
        assert cfg.to_params() == protonet.to_params()


def test_each_point_pairs_with_the_point_that_differs_only_in_the_baseline_field():
    grid = {"hallucinator": ["wang", "improved"], "M": [0, 10], "shots": [1, 5]}
    plan = sweeps.plan_sweep(WANG, grid, seeds=[0, 1], baseline="M=0")
    partners = {p.name: sweeps.baseline_partner(WANG, p, plan.baseline).name for p in plan.points}
    assert partners["hallucinator=improved,M=10,shots=5"] == "hallucinator=none,M=0,shots=5"
    assert partners["hallucinator=wang,M=10,shots=1"] == "hallucinator=none,M=0,shots=1"
    assert partners["hallucinator=none,M=0,shots=1"] == "hallucinator=none,M=0,shots=1"  # a baseline point


def test_children_are_named_by_point_and_seed_and_carry_their_seed():
    plan = sweeps.plan_sweep(WANG, {"hallucinator": ["wang"], "M": [10]}, seeds=[3, 7])
    assert [(c.name, c.cfg.seed) for c in plan.children] == [("hallucinator=wang,M=10-seed3", 3),
                                                             ("hallucinator=wang,M=10-seed7", 7)]
    unreplicated = sweeps.plan_sweep(WANG, {"M": [10]})  # no --seeds: one run with --seed, old names
    assert [(c.name, c.cfg.seed) for c in unreplicated.children] == [("M=10", 0)]
    seed_axis = sweeps.plan_sweep(WANG, {"seed": [3, 4]})  # --param seed: an ordinary grid axis
    assert [(c.name, c.seed, c.cfg.seed) for c in seed_axis.children] == [("seed=3", 3, 3), ("seed=4", 4, 4)]


def test_a_test_time_hallucinator_trains_its_largest_m_once_per_seed_and_tests_the_others_from_it():
    calibrated = TrainConfig(hallucinator="calibrated", M=100)
    plan = sweeps.plan_sweep(calibrated, {"M": [0, 10, 100, 50]}, seeds=[0, 1], baseline="M=0")
    twins = {c.name: getattr(sweeps.trained_twin(plan, c), "name", None) for c in plan.children}
    assert twins == {"M=0-seed0": None, "M=0-seed1": None, "M=100-seed0": None, "M=100-seed1": None,
                     "M=10-seed0": "M=100-seed0", "M=10-seed1": "M=100-seed1",
                     "M=50-seed0": "M=100-seed0", "M=50-seed1": "M=100-seed1"}
    order = [c.name for c in sweeps.run_order(plan)]
    assert order == ["M=0-seed0", "M=0-seed1", "M=100-seed0", "M=100-seed1",
                     "M=10-seed0", "M=10-seed1", "M=50-seed0", "M=50-seed1"]
    # another option than M differs: no twin; a hallucinator that trains (wang): no twin
    other = sweeps.plan_sweep(calibrated, {"M": [10, 100], "shots": [1, 5]})
    assert [sweeps.trained_twin(other, c).name for c in other.children if c.cfg.M == 10] == \
        ["M=100,shots=1", "M=100,shots=5"]
    wang = sweeps.plan_sweep(WANG, {"M": [10, 100]}, seeds=[0])
    assert [sweeps.trained_twin(wang, c) for c in wang.children] == [None, None]


def test_shards_split_points_never_seeds_and_each_shard_runs_its_baselines():
    grid = {"hallucinator": ["wang", "improved"], "M": [0, 10, 50]}  # 5 points, ProtoNet first
    plans = [sweeps.plan_sweep(WANG, grid, seeds=[0, 1, 2], baseline="M=0", shard=s, shards=2) for s in (0, 1)]
    assert names(plans[0].mine) == ["hallucinator=none,M=0", "hallucinator=wang,M=50", "hallucinator=improved,M=50"]
    assert names(plans[1].mine) == ["hallucinator=none,M=0", "hallucinator=wang,M=10", "hallucinator=improved,M=10"]
    for plan in plans:  # every point of a shard has all its seeds there
        for point in plan.mine:
            assert sorted(c.seed for c in plan.children if c.point == point) == [0, 1, 2]
    own = {p for plan in plans for p in sweeps.shard_points(plan.points, plan.shard, plan.shards)}
    assert own == set(plans[0].points)  # without the baseline copies, the shards cover the grid once
    no_baseline = sweeps.plan_sweep(WANG, grid, seeds=[0], shard=1, shards=2)
    assert "hallucinator=none,M=0" not in names(no_baseline.mine)


@pytest.mark.parametrize("text", ["", " ", "0,0", "1,2,1", "0,a", "1.5", "0,,1", "x"])
def test_bad_seeds_are_usage_errors(text):
    with pytest.raises(UsageError, match="--seeds"):
        sweeps.parse_seeds(text)


def test_seeds_parse_and_auto_means_no_replicates():
    assert sweeps.parse_seeds("3, 1,2") == [3, 1, 2]
    assert sweeps.parse_seeds("auto") is None and sweeps.parse_seeds(None) is None


@pytest.mark.parametrize("grid, baseline, needle", [
    ({"M": [0, 10]}, "M=5", "not a point of the grid"),
    ({"M": [0, 10]}, "shots=1", "swept fields"),
    ({"M": [0, 10]}, "M", "FIELD=VALUE"),
    ({"seed": [0, 1]}, None, "--seeds and --param seed"),
])
def test_bad_plans_are_usage_errors(grid, baseline, needle):
    with pytest.raises(UsageError, match=needle):
        sweeps.plan_sweep(WANG, grid, seeds=[0, 1], baseline=baseline)


def test_aggregate_by_hand():
    plan = sweeps.plan_sweep(WANG, {"M": [0, 10, 50]}, seeds=[0, 1, 2], baseline="M=0")
    acc = {("M=0", 0): 60.0, ("M=0", 1): 62.0, ("M=0", 2): 64.0,     # mean 62, s 2
           ("M=10", 0): 61.0, ("M=10", 1): 64.0, ("M=10", 2): 65.0,  # differences 1, 2, 1
           ("M=50", 0): 62.0, ("M=50", 1): 65.0, ("M=50", 2): 66.0}  # differences 2, 3, 2
    results = {c.name: sweeps.ChildResult(f"run{c.name}", {"test_acc": acc[c.point.name, c.seed],
                                                           "halluc_collapse": 0.1 * c.seed})
               for c in plan.children}
    base, m10, m50 = sweeps.aggregate(plan, results)
    t2 = 4.302652729911275  # t_{0.975, 2}
    assert base["test_acc"] == pytest.approx(62) and base["test_acc_ci95"] == pytest.approx(t2 * 2 / math.sqrt(3))
    assert base["is_baseline"] and "diff_vs_baseline" not in base and base["n_seeds"] == 3
    assert m10["test_acc"] == pytest.approx(190 / 3) and m10["seeds"] == "0,1,2"
    # differences 1, 2, 1: mean 4/3, s = sqrt(1/3), half = t2 * s / sqrt(3) = 1.434: [-0.10, 2.77]
    assert m10["diff_vs_baseline"] == pytest.approx(4 / 3)
    assert m10["diff_vs_baseline_ci95"] == pytest.approx(t2 * math.sqrt(1 / 3) / math.sqrt(3))
    assert m10["diff_excludes_0"] is False
    # differences 2, 3, 2: mean 7/3, the same half-width: [0.90, 3.77]
    assert m50["diff_vs_baseline"] == pytest.approx(7 / 3)
    assert m50["diff_vs_baseline_ci95"] == pytest.approx(t2 * math.sqrt(1 / 3) / math.sqrt(3))
    assert m50["diff_excludes_0"] is True
    assert m10["halluc_collapse"] == pytest.approx(0.1)  # mean of 0, 0.1, 0.2
    metrics = sweeps.parent_metrics([base, m10, m50])
    assert metrics["diff_vs_baseline/M-50"] == pytest.approx(7 / 3) and not any("excludes" in k for k in metrics)
    assert sweeps.parent_tags([base, m10, m50]) == {"fsl.diff_excludes_0.M-50": "yes", "fsl.diff_excludes_0.M-10": "no"}
    assert metrics["test_acc/M-0"] == pytest.approx(62) and metrics["best_test_acc"] == pytest.approx(193 / 3)
    assert "diff_vs_baseline/M-0" not in metrics


def test_aggregate_of_a_study_cut_short_pairs_only_the_seeds_both_points_have():
    plan = sweeps.plan_sweep(WANG, {"M": [0, 10, 50]}, seeds=[0, 1, 2], baseline="M=0")
    acc = {("M=0", 0): 60.0, ("M=0", 1): 62.0, ("M=0", 2): 64.0,
           ("M=50", 0): 62.0, ("M=50", 1): 65.0}                      # M=50 seed 2 and all of M=10 missing
    results = {c.name: sweeps.ChildResult("", {"test_acc": acc[c.point.name, c.seed]})
               for c in plan.children if (c.point.name, c.seed) in acc}
    base, m10, m50 = sweeps.aggregate(plan, results)
    assert base["n_seeds"] == 3 and m10["n_seeds"] == 0 and "diff_vs_baseline" not in m10
    # differences 2, 3 on seeds 0 and 1: mean 2.5, s = sqrt(1/2), half = t1 * s / sqrt(2) = t1 / 2
    assert m50["n_seeds"] == 2 and m50["seeds"] == "0,1" and m50["test_acc"] == pytest.approx(63.5)
    assert m50["diff_vs_baseline"] == pytest.approx(2.5)
    assert m50["diff_vs_baseline_ci95"] == pytest.approx(T_975_DF1 / 2)
    assert len(sweeps.child_rows(plan, results)) == 5


def test_metric_keys_are_names_mlflow_accepts():
    assert sweeps.metric_key("hallucinator=wang,M=10") == "hallucinator-wang_M-10"
    assert sweeps.metric_key("data=/a/b.zip,lr=0.001") == "data-_a_b.zip_lr-0.001"


# ------------------------------------------------------------------------------ end to end
T_975_DF1 = 12.706204736174698  # Student's t, 95% two-sided, 1 degree of freedom (2 seeds)


def parent_table(client, run_id, name="sweep.csv"):
    with open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name)) as f:
        return list(csv.DictReader(f))


def test_a_replicated_sweep_aggregates_two_seeds_of_two_points_in_the_parent(tracking):
    result = CliRunner().invoke(cli, ["sweep-m", *TINY, "--values", "0,2", "--seeds", "0,1"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    runs = all_runs(client)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    named = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert parent.info.run_name == "sweep-hallucinate-calibrated-M0,2-2seeds"
    assert set(named) == {"protonet-M=0-seed0", "protonet-M=0-seed1",
                          "hallucinate-calibrated-M=2-seed0", "hallucinate-calibrated-M=2-seed1"}
    children = {name[name.index("M="):]: run for name, run in named.items()}  # by point and seed
    for name, child in children.items():  # the children hold their seeds; M = 0 is a plain ProtoNet
        assert child.data.params["seed"] == name[-1]
        assert child.data.tags["fsl.method"] == ("protonet" if name.startswith("M=0") else "hallucinate")
    for name in ("M=2-seed0", "M=2-seed1"):
        metrics = children[name].data.metrics
        assert set(METRICS) - {"halluc_collapse"} <= set(metrics)  # calibrated has no weights to collapse
        assert metrics["halluc_mix_weight"] == pytest.approx(2 / 3)  # Wang's rule at K=1, M=2: M / (K + M)
    assert {"sweep.csv", "sweep_runs.csv", "sweep.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    acc = {name: child.data.metrics["test_acc"] for name, child in children.items()}
    rows = {r["point"]: r for r in parent_table(client, parent.info.run_id)}
    assert set(rows) == {"M=0", "M=2"}
    for point in ("M=0", "M=2"):
        a, b = acc[f"{point}-seed0"], acc[f"{point}-seed1"]
        assert float(rows[point]["test_acc"]) == pytest.approx((a + b) / 2)
        assert float(rows[point]["test_acc_ci95"]) == pytest.approx(T_975_DF1 * abs(a - b) / 2)
        assert rows[point]["n_seeds"] == "2" and rows[point]["seeds"] == "0,1"
    d0, d1 = acc["M=2-seed0"] - acc["M=0-seed0"], acc["M=2-seed1"] - acc["M=0-seed1"]
    assert rows["M=0"]["is_baseline"] == "True" and rows["M=0"]["diff_vs_baseline"] == ""
    assert float(rows["M=2"]["diff_vs_baseline"]) == pytest.approx((d0 + d1) / 2)
    half = T_975_DF1 * abs(d0 - d1) / 2
    assert float(rows["M=2"]["diff_vs_baseline_ci95"]) == pytest.approx(half)
    assert rows["M=2"]["diff_excludes_0"] == str(abs((d0 + d1) / 2) > half)
    metrics = parent.data.metrics
    assert metrics["test_acc/M-2"] == pytest.approx(float(rows["M=2"]["test_acc"]))
    assert metrics["diff_vs_baseline/M-2"] == pytest.approx((d0 + d1) / 2)
    assert metrics["diff_vs_baseline_ci95/M-2"] == pytest.approx(half)
    assert parent.data.params["seeds"] == "0,1" and parent.data.params["baseline"] == "M=0"
    per_child = parent_table(client, parent.info.run_id, "sweep_runs.csv")
    assert {(r["point"], r["seed"], r["run_id"]) for r in per_child} == \
        {(n.rsplit("-seed", 1)[0], n[-1], c.info.run_id) for n, c in children.items()}


def test_a_restarted_sweep_trains_only_the_children_that_did_not_finish(tracking, monkeypatch):
    import fsl.commands.cmd_train

    real_train, trained = fsl.commands.cmd_train.train, []

    def recording(model, data, cfg, *args, **kwargs):
        trained.append((cfg.shots, cfg.seed))
        if fail_at == (cfg.shots, cfg.seed):
            raise RuntimeError("interrupted")
        return real_train(model, data, cfg, *args, **kwargs)

    monkeypatch.setattr(fsl.commands.cmd_train, "train", recording)
    args = ["sweep", *TINY, "--param", "shots=1,2", "--seeds", "0,1"]
    fail_at = (2, 1)  # the last of 4 children
    first = CliRunner().invoke(cli, args)
    assert first.exit_code != 0 and "interrupted" in str(first.exception)
    assert trained == [(1, 0), (1, 1), (2, 0), (2, 1)]
    client = MlflowClient()
    assert sorted(r.info.status for r in all_runs(client)) == ["FAILED", "FAILED", "FINISHED", "FINISHED", "FINISHED"]

    trained.clear()
    fail_at = None
    second = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert trained == [(2, 1)]  # only the child that had not finished
    assert second.output.count("already finished") == 3 and "4 runs (3 reused)" in second.output
    [parent] = [r for r in all_runs(client) if r.data.tags.get("fsl.method") == "sweep" and r.info.status == "FINISHED"]
    per_child = parent_table(client, parent.info.run_id, "sweep_runs.csv")
    assert sorted((r["shots"], r["seed"], r["reused"]) for r in per_child) == [
        ("1", "0", "True"), ("1", "1", "True"), ("2", "0", "True"), ("2", "1", "False")]
    rows = parent_table(client, parent.info.run_id)
    assert [r["n_seeds"] for r in rows] == ["2", "2"]


def test_a_calibrated_sweep_trains_once_per_seed_and_tests_each_m_from_that_model(tracking, monkeypatch):
    import fsl.commands.cmd_train

    real_train, trained = fsl.commands.cmd_train.train, []

    def recording(model, data, cfg, *args, **kwargs):
        trained.append((cfg.M, cfg.seed))
        return real_train(model, data, cfg, *args, **kwargs)

    monkeypatch.setattr(fsl.commands.cmd_train, "train", recording)
    args = ["sweep", *TINY, "--method", "hallucinate", "--hallucinator", "calibrated",
            "--param", "M=0,2,6", "--seeds", "0,1", "--baseline", "M=0", "--tsne"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert trained == [(0, 0), (0, 1), (6, 0), (6, 1)]  # M=2 is tested from the M=6 model
    client = MlflowClient()
    children = {r.info.run_name.removeprefix("hallucinate-calibrated-").removeprefix("protonet-"): r
                for r in all_runs(client) if "mlflow.parentRunId" in r.data.tags}
    for seed in (0, 1):
        tested, twin = children[f"M=2-seed{seed}"], children[f"M=6-seed{seed}"]
        assert tested.data.tags["fsl.trained_in"] == twin.info.run_id and "fsl.trained_in" not in twin.data.tags
        assert tested.data.params["M"] == "2" and tested.data.params["seed"] == str(seed)
        assert tested.data.metrics["twin_best_val_acc"] == twin.data.metrics["best_val_acc"]
        assert 0 <= tested.data.metrics["best_val_acc"] <= 100  # measured at M=2 on the fixed val episodes
        assert {"test_acc", "test_acc_no_hallucination", "halluc_mean_offset"} <= set(tested.data.metrics)
        # the same encoder: the same accuracy without hallucination, on the same episodes
        assert tested.data.metrics["test_acc_no_hallucination"] == twin.data.metrics["test_acc_no_hallucination"]
        model = fsl.commands.cmd_train.load_model(f"runs:/{tested.info.run_id}")
        assert model.M == 2 and model.config["hallucinator"] == "calibrated"
        assert {a.path for a in client.list_artifacts(tested.info.run_id)} >= {"checkpoints", "tsne.png"}
    trained.clear()
    again = CliRunner().invoke(cli, args, catch_exceptions=False)  # a restart reuses all six
    assert again.exit_code == 0 and trained == [] and "6 runs (6 reused)" in again.output, again.output


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """Row by row, key by key, NaN equal to NaN (a one-seed CI)."""
    def same(x, y):
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
    return len(a) == len(b) and all(r.keys() == q.keys() and all(same(r[k], q[k]) for k in r) for r, q in zip(a, b))


def test_a_study_without_mlflow_gives_the_table_of_the_same_sweep_with_mlflow(tracking, monkeypatch):
    """The run path is one and tracking a parameter: the sweep under `NullRuns` (nothing recorded,
    twins handed over as checkpoints in memory's place) and under MLflow, where the M=6 twins were
    trained by an earlier sweep and M=2 is tested from their checkpoints fetched from the store."""
    import fsl.commands.cmd_train
    from fsl.commands.cmd_sweep import run_sweep
    from fsl.commands.options import SILENT
    from fsl.tracking.null import NullRuns

    real_train, trained = fsl.commands.cmd_train.train, []
    def recording(model, data, cfg, *args, **kwargs):
        trained.append(cfg.M)
        return real_train(model, data, cfg, *args, **kwargs)

    monkeypatch.setattr(fsl.commands.cmd_train, "train", recording)
    base = TrainConfig(image_size=16, epochs=1, episodes_per_epoch=4, val_episodes=3, test_episodes=5, queries=3,
                       test_queries=3, precision="fp32", device="cpu", hallucinator="calibrated", M=6)
    plan = {"seeds": [0, 1], "baseline": "M=0", "reporter": SILENT}
    untracked = run_sweep(base, {"M": [0, 2, 6]}, runs=NullRuns(), **plan)
    client = MlflowClient()
    assert all_runs(client) == [] and trained == [0, 0, 6, 6]
    run_sweep(base, {"M": [0, 6]}, **plan)
    trained.clear()
    tracked = run_sweep(base, {"M": [0, 2, 6]}, **plan)
    assert trained == []  # M=0 and M=6 reused, M=2 tested from the stored M=6 checkpoints
    assert [r["point"] for r in tracked] == ["M=0", "M=2", "M=6"] and "test_acc_no_hallucination" in tracked[1]
    assert same_rows(untracked, tracked), (untracked, tracked)


@pytest.mark.slow
def test_the_config_hash_of_a_child_is_the_same_in_another_process(fsl_cache):
    from fsl.commands.run_identity import config_hash, run_params
    from fsl.commands.training_setup import prepare_training

    code = ("from fsl.config import TrainConfig; from fsl.commands.training_setup import prepare_training; "
            "from fsl.commands.run_identity import config_hash, run_params; "
            "print(config_hash(run_params(prepare_training(TrainConfig(image_size=16, "
            "hallucinator='wang', M=3, seed=4, precision='fp32', device='cpu')), 1)))")
    here = config_hash(run_params(prepare_training(TrainConfig(image_size=16, hallucinator="wang", M=3, seed=4,
                                                               precision="fp32", device="cpu")), 1))
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).parents[1]).stdout.strip()
    assert here == there and len(here) == 16


def test_a_sweep_registers_nothing_by_default_its_best_child_with_best_and_every_child_with_all(tracking):
    from fsl.tracking.model_registry import SERVE_SUFFIX

    client = MlflowClient()
    args = ["sweep-m", *[a for a in TINY if a != "--no-register"], "--values", "0,2", "--no-system-metrics"]
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    assert client.search_registered_models() == []
    parent = max((r for r in all_runs(client) if "mlflow.parentRunId" not in r.data.tags),
                 key=lambda r: r.info.start_time)
    assert {"fsl.best_child.fsl-protonet", "fsl.best_child.fsl-hallucinate"} <= set(parent.data.tags)
    out = CliRunner().invoke(cli, [*args, "--seed", "1", "--register", "best"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    names = {m.name: m for m in client.search_registered_models()}
    assert set(names) == {"fsl-protonet", "fsl-hallucinate", "fsl-protonet" + SERVE_SUFFIX,
                          "fsl-hallucinate" + SERVE_SUFFIX}
    for name in ("fsl-protonet", "fsl-hallucinate"):
        [version] = client.search_model_versions(f"name='{name}'")  # one version each, not one per child
        parent = max((r for r in all_runs(client) if "mlflow.parentRunId" not in r.data.tags),
                     key=lambda r: r.info.start_time)
        assert parent.data.tags[f"fsl.best_child.{name}"].endswith(f"({version.run_id})")
    every = CliRunner().invoke(cli, [*args, "--seeds", "2,3", "--register", "all"], catch_exceptions=False)
    assert every.exit_code == 0
    assert len(client.search_model_versions("name='fsl-protonet'")) == 1 + 2  # the best above, then each child


def test_sweep_and_child_names_say_the_method_the_grid_and_the_point():
    base = TrainConfig(hallucinator="calibrated", M=10)
    m_study = sweeps.plan_sweep(base, {"M": [0, 10, 50, 100]}, seeds=[0, 1, 2, 3, 4], baseline="M=0")
    assert sweeps.sweep_run_name(m_study) == "sweep-hallucinate-calibrated-M0,10,50,100-5seeds"
    assert {sweeps.child_run_name(c) for c in m_study.children if c.seed == 3} == {
        "protonet-M=0-seed3", "hallucinate-calibrated-M=10-seed3", "hallucinate-calibrated-M=50-seed3",
        "hallucinate-calibrated-M=100-seed3"}
    by_hallucinator = sweeps.plan_sweep(base, {"hallucinator": ["wang"], "M": [0, 10]})
    assert sweeps.sweep_run_name(by_hallucinator) == "sweep-hallucinate-hallucinator=wang-M0,10"
    assert [sweeps.child_run_name(c) for c in by_hallucinator.children] == [
        "protonet-hallucinator=none,M=0", "hallucinate-hallucinator=wang,M=10"]
    long = sweeps.plan_sweep(TrainConfig(), {"seed": list(range(60))})
    assert len(sweeps.sweep_run_name(long)) == sweeps.MAX_RUN_NAME and sweeps.sweep_run_name(long).endswith("~")


def test_data_handed_in_is_part_of_the_run_identity_and_a_sweep_over_data_options_refuses_it(fsl_cache):
    """A study that reads its own data sets must never reuse (or resume) a run made on other data."""
    from fsl.commands.cmd_sweep import run_sweep
    from fsl.commands.run_identity import config_hash, run_params
    from fsl.commands.training_setup import prepare_training
    from fsl.data import load_dataset
    from fsl.tracking.null import NullRuns

    cfg = TrainConfig(image_size=16, precision="fp32", device="cpu")
    read = config_hash(run_params(prepare_training(cfg), 1))
    same = load_dataset("synthetic", 16)
    rotated = load_dataset("synthetic", 16, rotations=True)
    handed = config_hash(run_params(prepare_training(cfg, data=same), 1))
    other = config_hash(run_params(prepare_training(cfg, data=rotated), 1))
    assert len({read, handed, other}) == 3
    with pytest.raises(UsageError, match="a sweep over rotations reads its data itself"):
        run_sweep(cfg, {"rotations": [False, True]}, data=same, runs=NullRuns())


def test_the_mlflow_and_the_null_store_implement_the_whole_runs_protocol():
    """Every method of `Runs` and `Tracker`, with the protocol's parameters, in both stores."""
    import inspect

    from fsl.tracking import protocol
    from fsl.tracking.null import NullRuns, NullTracker
    from fsl.tracking.runs import MlflowRuns, Tracker

    stores = ((protocol.Runs, (NullRuns, MlflowRuns)), (protocol.Tracker, (NullTracker, Tracker)))
    for spec, implementations in stores:
        methods = [name for name, member in vars(spec).items() if callable(member) and not name.startswith("_")]
        assert methods, spec
        for cls in implementations:
            for name in methods:
                wanted = list(inspect.signature(getattr(spec, name)).parameters)
                assert list(inspect.signature(getattr(cls, name)).parameters)[:len(wanted)] == wanted, (cls, name)


def test_a_swept_hallucinator_of_none_trains_a_protonet_not_the_base_hallucinator():
    """`--param hallucinator=none,calibrated` on a base with a hallucinator: the none point is a
    ProtoNet (None is a value there; only on a component setting it means "not this component's")."""
    grid = sweeps.parse_grid(WANG, ("hallucinator=none,calibrated",))
    none, calibrated = (sweeps.point_config(WANG, p) for p in sweeps.expand_grid(WANG, grid))
    assert (none.hallucinator, none.M) == (None, 0) and (calibrated.hallucinator, calibrated.M) == ("calibrated", 100)


@pytest.mark.parametrize("command", [["sweep", "--method", "protonet", "--param", "shots=1,5"], ["protonet"]])
def test_protonet_commands_train_a_protonet_whatever_the_recipe_says(command, monkeypatch):
    """simpleshot-calibrated names a hallucinator: `fsl protonet` and `fsl sweep --method protonet`
    take its other settings and stay plain ProtoNets."""
    seen = []
    monkeypatch.setattr("fsl.commands.cmd_sweep.run_sweep", lambda base, *a, **k: seen.append(base))
    monkeypatch.setattr("fsl.commands.cmd_train.run_training", lambda cfg, *a, **k: seen.append(cfg))
    result = CliRunner().invoke(cli, [*command, "--recipe", "simpleshot-calibrated"])
    assert result.exit_code == 0, result.output
    [cfg] = seen
    assert (cfg.hallucinator, cfg.M, cfg.feature_transform, cfg.recipe) == (None, 0, "cl2n", "simpleshot-calibrated")
