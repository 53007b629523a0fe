"""How a study searches: the recipe as trial 0 (never pruned), points of the space for queued configs, successive
halving within a model kind, and the sampler seed (the same command draws the same trials)."""

import json

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tests.helpers import run_cli
from vae.config import Config, DataConfig, ModelConfig, TrainConfig
from vae.tune.search import Halving, sampler_seed
from vae.tune.seeds import FIXED, ORIGIN, enqueue, enqueue_recipe, on_budget, trial_config
from vae.tune.space import load_space, params_of, to_config

BASE = Config(DataConfig(subset=300), ModelConfig(), TrainConfig(epochs=3, progress=False, patience=2))


def test_the_recipe_is_a_point_of_the_default_space_and_comes_back_from_it():
    space = load_space(None, BASE)
    point = params_of(BASE, space, BASE)
    assert point == {"model": "vae", "hidden_width": 400, "latent": 20, "lr": 1e-3, "batch_size": 128}
    assert to_config(BASE, {**point, "channels": 16}) == BASE  # the fixed conv width does not touch an MLP
    conv = BASE.replace(model={"kind": "conv-vae", "channels": 16, "hidden": [512]})
    assert to_config(BASE, params_of(conv, space, BASE) | {"channels": 16}) == conv


@pytest.mark.parametrize(
    "change",
    [
        {"model": {"latent": 5}},  # below the range
        {"train": {"batch_size": 32}},  # not a choice
        {"model": {"hidden": [400, 400]}},  # a depth the space does not draw
        {"model": {"kind": "conv-vae", "channels": 32}},  # a width the space fixes otherwise
        {"train": {"beta": 0.5}},  # a field the space has no parameter for
    ],
)
def test_a_config_the_space_cannot_express_is_no_point(change):
    assert params_of(BASE.replace(**change), load_space(None, BASE), BASE) is None


def test_queued_configs_go_in_once_as_points_or_as_fixed_configs():
    study = optuna.create_study()
    space = load_space(None, BASE)
    assert enqueue_recipe(study, space, BASE) == {ORIGIN: "recipe", "params": params_of(BASE, space, BASE)}
    assert enqueue_recipe(study, space, BASE) is None  # already queued
    other = BASE.replace(train={"beta": 0.5, "epochs": 99})  # trained elsewhere at another budget
    queued = enqueue(study, other, space, BASE, "champion")
    assert queued[FIXED] == on_budget(other, BASE).to_dict() and queued[FIXED]["train"]["epochs"] == 3
    assert enqueue(study, other, space, BASE, "champion") is None
    configs = [trial_config(t, BASE) for t in study.get_trials()]
    assert configs == [BASE, on_budget(other, BASE)]


def test_a_new_study_starts_with_the_recipe_which_no_pruner_stops(tmp_path):
    """threshold:1 prunes every trial at its first epoch (no -ELBO is below 1 nat): all but the recipe."""
    r = run_cli(
        "tune", "--subset", "300", "--trials", "3", "--epochs", "2", "--pruner", "threshold:1",
        "--no-tracking", "--storage", f"sqlite:///{tmp_path}/o.db", "--out", tmp_path / "study", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    study = optuna.load_study(study_name=summary["study"], storage=f"sqlite:///{tmp_path}/o.db")
    recipe, *others = study.get_trials()
    assert recipe.user_attrs[ORIGIN] == "recipe" and recipe.state == TrialState.COMPLETE
    model = recipe.user_attrs["config"]["model"]
    assert (model["kind"], model["latent"], model["hidden"]) == ("vae", 20, [400])
    assert (
        recipe.user_attrs["config"]["train"]["lr"] == 1e-3 and recipe.user_attrs["config"]["train"]["batch_size"] == 128
    )
    assert [t.state for t in others] == [TrialState.PRUNED] * 2
    assert summary["best_trial"] == 0 and summary["recipe"]["trial"] == 0
    assert summary["best_checkpoint"].endswith("trial-0/best.pt")  # the winner's best epoch is the model
    history = json.loads((tmp_path / "study" / "trial-0" / "history.json").read_text())
    assert min(row["val_neg_elbo"] for row in history["history"]) == summary["best_value"]


def _trial(kind: str, curve: dict[int, float], state=TrialState.COMPLETE):
    return create_trial(
        state=state,
        value=min(curve.values()) if state == TrialState.COMPLETE else None,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        intermediate_values=curve,
        user_attrs={"config": {"model": {"kind": kind}}},
    )


def test_halving_keeps_the_best_third_of_a_rung_within_each_model_kind():
    study = optuna.create_study()
    for value in (150.0, 160.0, 170.0):  # three MLP trials at rung 3
        study.add_trial(_trial("vae", {3: value}, TrialState.PRUNED))
    pruner = Halving(min_epochs=3, eta=3, by_kind=True)
    assert [pruner.is_rung(e) for e in (1, 2, 3, 4, 9, 10, 27)] == [False, False, True, False, True, False, True]

    def judged(kind, value, step=3):
        return pruner.prune(study, _trial(kind, {step: value}, TrialState.RUNNING))

    assert not judged("vae", 149.0) and judged("vae", 151.0)  # 4 at the rung: the best one goes on
    assert not judged("conv-vae", 190.0)  # the first conv trial at the rung goes on, whatever the MLPs did
    assert not judged("vae", 151.0, step=4)  # not a rung: never stopped there
    assert Halving(3, 3, by_kind=False).prune(study, _trial("conv-vae", {3: 190.0}, TrialState.RUNNING))


def test_sampler_seeds_differ_by_night_and_worker_and_repeat_for_the_same_state():
    assert sampler_seed(0, 10) == sampler_seed(0, 10) and sampler_seed(None, 10) is None
    assert len({sampler_seed(0, 0), sampler_seed(0, 10), sampler_seed(1, 0), sampler_seed(0, 0, worker=1)}) == 4


@pytest.mark.slow
def test_the_same_sampler_seed_draws_the_same_trials_and_another_seed_others(tmp_path):
    def study(folder, seed):
        r = run_cli(
            "tune", "--subset", "300", "--trials", "4", "--epochs", "2", "--min-epochs", "1", "--startup-trials", "2",
            "--sampler-seed", seed, "--no-tracking", "--storage", f"sqlite:///{folder}/o.db", "--out",
            folder / "study", "--json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        name = json.loads(r.stdout.splitlines()[-1])["study"]
        trials = optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/o.db").get_trials()
        return [(t.params, t.state, t.value) for t in trials]

    first, again, other = study(tmp_path / "a", 7), study(tmp_path / "b", 7), study(tmp_path / "c", 8)
    assert first == again
    assert [p for p, _, _ in first[1:]] != [p for p, _, _ in other[1:]]  # trial 0 is the recipe in both


def test_a_study_of_another_data_set_is_not_warm_started_from(tmp_path):
    from vae.errors import ConfigError
    from vae.tune.nightly import plan_night

    storage = f"sqlite:///{tmp_path}/o.db"
    first = plan_night(storage, "vae-m", "a" * 64, BASE, 2, source="idx:/a/data")
    assert first["case"] == "first-night"
    again = plan_night(storage, "vae-m", "b" * 64, BASE, 2, source="idx:/a/data")  # the folder grew: new data
    assert again["case"] == "new-data"
    names = set(optuna.get_all_study_names(storage))
    with pytest.raises(ConfigError, match=r"'vae-m' has studies of idx:/a/data .*, not of idx:/b/data"):
        plan_night(storage, "vae-m", "c" * 64, BASE, 2, source="idx:/b/data")
    assert set(optuna.get_all_study_names(storage)) == names  # refused before anything was written
    moved = plan_night(storage, "vae-m", "c" * 64, BASE, 2, source="idx:/b/data", switch=True)
    assert moved["case"] == "new-data"
    assert plan_night(storage, "vae-m", "d" * 64, BASE, 2, source="idx:/b/data")["case"] == "new-data"  # moved


def test_a_night_queues_no_more_first_trials_than_it_has_trials(tmp_path):
    """With --trials 1 the anchor used to be queued behind the recipe and then refused as surplus: an Optuna
    'Trial 1 failed' in a healthy night's log and fail: 1 in its counts."""
    from vae.tune.nightly import plan_night

    storage = f"sqlite:///{tmp_path}/o.db"
    one = plan_night(storage, "vae-one", "a" * 64, BASE, 1)
    assert [q[ORIGIN] for q in one["seeded"]] == ["recipe"]
    study = optuna.load_study(study_name=one["study"], storage=storage)
    assert [t.state for t in study.get_trials()] == [TrialState.WAITING]
    more = plan_night(storage, "vae-more", "a" * 64, BASE, 4)
    assert [q[ORIGIN] for q in more["seeded"]] == ["recipe", "anchor"]


def test_vae_tune_with_one_trial_runs_the_recipe_and_fails_nothing(tmp_path):
    r = run_cli(
        "tune", "--subset", "300", "--trials", "1", "--epochs", "1", "--no-tracking",
        "--storage", f"sqlite:///{tmp_path}/o.db", "--out", tmp_path / "study", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["counts"] == {"complete": 1, "pruned": 0, "fail": 0, "running": 0, "waiting": 0}, summary
    assert summary["surplus"] == 0 and summary["recipe"]["trial"] == 0 and "Trial 1 failed" not in r.stderr
