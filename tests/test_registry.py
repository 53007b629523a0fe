"""The promotion gate and rollback against a real MLflow registry (SQLite store in a temporary folder)."""

import contextlib
import json
import math
import os
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow import MlflowClient

from tests.helpers import throwaway_postgres
from vae.cli import main
from vae.errors import ConfigError, LockBusy, StaleDecision
from vae.stores import champion_lock
from vae.tracking import models as serving
from vae.tracking import registry

FP = "f" * 64


@pytest.fixture()
def store(tmp_path, trained):
    """A tracking URI and a logged pyfunc model of the `trained` checkpoint to register versions of."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    from vae.tracking.store import experiment_id

    with mlflow.start_run(experiment_id=experiment_id("registry-test")) as run:  # artifacts beside the db
        info = serving.log_model(trained[0], name="model")
    yield uri, info.model_uri, run.info.run_id, info.model_id
    mlflow.set_tracking_uri(None)


def add(store, value, fingerprint=FP):
    uri, model_uri, run_id, model_id = store
    return registry.register(
        uri,
        "vae-test",
        model_uri,
        run_id,
        {"neg_elbo": value, "fingerprint": fingerprint, "dataset": "mnist-5k", "split": "test"},
        model_id=model_id,
    )


def aliases(uri):
    client = MlflowClient(uri, uri)
    return {a: str(v) for a, v in client.get_registered_model("vae-test").aliases.items()}


def test_first_version_is_promoted_then_only_a_clear_improvement_is(store):
    uri = store[0]
    v1 = add(store, 100.0)
    assert aliases(uri) == {"challenger": v1}
    d = registry.promote(uri, "vae-test", v1, min_improvement=0.5)
    assert d.promote and "no champion" in d.reason
    assert aliases(uri) == {"challenger": v1, "champion": v1}

    worse = add(store, 101.0)
    d = registry.promote(uri, "vae-test", worse, min_improvement=0.5)
    assert not d.promote and d.improvement == pytest.approx(-1.0)
    assert aliases(uri) == {"challenger": worse, "champion": v1}

    tie = add(store, 99.6)  # better by 0.4 nats, inside the 0.5 margin
    assert not registry.promote(uri, "vae-test", tie, min_improvement=0.5).promote
    assert aliases(uri)["champion"] == v1

    better = add(store, 99.0)
    d = registry.promote(uri, "vae-test", better, min_improvement=0.5)
    assert d.promote and d.improvement == pytest.approx(1.0)
    assert aliases(uri) == {"challenger": better, "champion": better}

    tags = MlflowClient(uri, uri).get_model_version("vae-test", tie).tags
    assert tags["promotion.decision"] == "rejected" and tags["promotion.compared_to"] == v1

    before = MlflowClient(uri, uri).get_model_version("vae-test", better).tags
    again = registry.promote(uri, "vae-test", better, min_improvement=0.5)  # the champion itself, asked again
    assert again.already_champion and not again.promote and "already champion" in again.reason
    assert MlflowClient(uri, uri).get_model_version("vae-test", better).tags == before  # nothing re-recorded
    assert not d.already_champion


def test_rollback_walks_back_the_champion_history(store):
    uri = store[0]
    v1, v2, v3 = add(store, 100.0), add(store, 98.0), add(store, 96.0)
    for v in (v1, v2, v3):
        assert registry.promote(uri, "vae-test", v, 0.5).promote
    assert registry.rollback(uri, "vae-test") == {"name": "vae-test", "champion": v2, "rolled_back": v3}
    assert aliases(uri)["champion"] == v2
    assert registry.rollback(uri, "vae-test")["champion"] == v1
    with pytest.raises(ConfigError, match="no previous champion"):
        registry.rollback(uri, "vae-test")
    assert aliases(uri)["champion"] == v1
    log = json.loads(MlflowClient(uri, uri).get_registered_model("vae-test").tags["rollback_log"])
    assert [(e["from"], e["to"]) for e in log] == [(v3, v2), (v2, v1)]


def test_versions_scored_on_different_data_are_not_compared(store):
    uri = store[0]
    v1 = add(store, 100.0)
    registry.promote(uri, "vae-test", v1, 0.5)
    other = add(store, 50.0, fingerprint="0" * 64)
    with pytest.raises(ConfigError, match="different data"):
        registry.promote(uri, "vae-test", other, 0.5)
    assert aliases(uri)["champion"] == v1
    assert registry.promote(uri, "vae-test", other, 0.5, force=True).promote


def test_registry_cli_lists_promotes_and_rolls_back(store, capsys):
    uri = store[0]
    v1, v2 = add(store, 100.0), add(store, 90.0)
    base = ["--name", "vae-test", "--tracking-uri", uri]
    assert main(["registry", "promote", "--version", v1, *base]) == 0
    assert main(["registry", "promote", "--version", v2, *base]) == 0
    capsys.readouterr()
    assert main(["registry", "list", *base, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["versions"]
    assert [(r["version"], r["aliases"]) for r in rows] == [(v1, []), (v2, ["challenger", "champion"])]
    assert main(["registry", "rollback", *base]) == 0
    assert f"champion is v{v1} again" in capsys.readouterr().out
    assert main(["registry", "promote", "--version", "99", *base]) == 2
    assert "has no version '99'" in capsys.readouterr().err
    assert main(["registry", "list", "--name", "nope", "--tracking-uri", uri]) == 2


# The gate's boundary. Values exactly representable in binary floating point, so that the gain is exactly
# min_improvement (100.5 - 100.0 == 0.5, no rounding): a tie with the margin does not promote, and the
# smallest float above it does. The tags store 6 decimals, which keep these values exact.
@pytest.mark.parametrize(
    "champion, candidate, promoted",
    [
        (100.5, 100.0, False),  # gain == min_improvement exactly: not enough
        (100.5, math.nextafter(100.0, 0), True),  # gain just above the margin: promoted
        (100.5, 99.75, True),  # gain 0.75
        (100.25, 100.0, False),  # gain 0.25
    ],
)
def test_the_gate_needs_strictly_more_than_min_improvement(champion, candidate, promoted):
    assert 100.5 - 100.0 == 0.5  # the premise: this boundary is exact in binary floating point
    d = registry.decide("2", candidate, "1", champion, min_improvement=0.5)
    assert d.promote is promoted, d.reason
    assert d.improvement == champion - candidate


def test_a_gain_equal_to_min_improvement_keeps_the_champion_in_the_registry(store):
    uri = store[0]
    v1 = add(store, 100.5)
    assert registry.promote(uri, "vae-test", v1, min_improvement=0.5).promote
    tie = add(store, 100.0)  # exactly 0.5 nats better
    d = registry.promote(uri, "vae-test", tie, min_improvement=0.5)
    assert not d.promote and d.improvement == 0.5, d
    assert aliases(uri)["champion"] == v1
    assert MlflowClient(uri, uri).get_model_version("vae-test", tie).tags["promotion.decision"] == "rejected"
    above = add(store, 99.999)  # 0.501 nats better
    assert registry.promote(uri, "vae-test", above, min_improvement=0.5).promote
    assert aliases(uri)["champion"] == above


def test_a_sign_off_is_recorded_and_a_reject_keeps_the_champion(store):
    uri = store[0]
    v1 = add(store, 100.0)
    assert registry.promote(uri, "vae-test", v1, 0.5).promote
    asked = []

    def reject(d):
        asked.append(d)
        return {"decision": "reject", "reviewer": "ada", "comment": "samples look blurry", "time": "t1"}

    v2 = add(store, 90.0)
    d = registry.promote(uri, "vae-test", v2, 0.5, approve=reject)
    assert [a.promote for a in asked] == [True]  # the reviewer is asked about a promotion the gate allows
    assert not d.promote and d.reason.endswith("rejected at sign-off by ada: samples look blurry"), d.reason
    assert d.approval["decision"] == "reject" and aliases(uri)["champion"] == v1
    tags = MlflowClient(uri, uri).get_model_version("vae-test", v2).tags
    assert tags["promotion.decision"] == "rejected" and "rejected at sign-off" in tags["promotion.reason"]
    assert (tags["approval.decision"], tags["approval.reviewer"], tags["approval.comment"]) == (
        "reject",
        "ada",
        "samples look blurry",
    )

    v3 = add(store, 80.0)
    iv = {"mean": 20.0, "low": 19.0, "high": 21.0, "confidence": 0.95, "images": 500}
    approve = {"decision": "approve", "reviewer": "bob", "time": "t2"}
    d = registry.promote(uri, "vae-test", v3, 0.5, interval=iv, approve=lambda d: approve)
    assert d.promote and d.approval["reviewer"] == "bob" and aliases(uri)["champion"] == v3
    tags = MlflowClient(uri, uri).get_model_version("vae-test", v3).tags
    assert tags["approval.decision"] == "approve" and float(tags["promotion.gain_low"]) == 19.0

    v4 = add(store, 80.0)  # no gain: refused by the gate, nobody is asked
    d = registry.promote(uri, "vae-test", v4, 0.5, approve=lambda d: pytest.fail("asked about a refused candidate"))
    assert not d.promote and "approval.decision" not in MlflowClient(uri, uri).get_model_version("vae-test", v4).tags


def _v2_judged_against_v1(store):
    """v1 champion, v2 registered and judged (to be promoted), nothing applied yet."""
    uri = store[0]
    v1 = add(store, 100.0)
    registry.promote(uri, "vae-test", v1)
    v2 = add(store, 98.0)
    d = registry.judge(uri, "vae-test", v2, min_improvement=0.5)
    assert d.promote and d.champion == v1
    return uri, v1, v2, d


def test_a_decision_judged_against_a_champion_that_moved_since_changes_nothing(store):
    """The sign-off's window: the night judged v2 against v1, someone promoted v3 by hand meanwhile."""
    uri, v1, v2, d = _v2_judged_against_v1(store)
    v3 = add(store, 97.0)
    registry.promote(uri, "vae-test", v3, force=True)  # by hand
    with pytest.raises(StaleDecision, match=f"judged against champion v{v1}, but the champion is v{v3} now"):
        registry.apply(uri, "vae-test", d)
    client = MlflowClient(uri, uri)
    assert aliases(uri)["champion"] == v3 and not any(
        k.startswith("promotion.") for k in client.get_model_version("vae-test", v2).tags
    )
    assert json.loads(client.get_registered_model("vae-test").tags["champion_history"]) == [v1, v3]
    again = registry.judge(uri, "vae-test", v2, min_improvement=0.5)  # judged again, against v3: it does not beat it
    assert again.champion == v3 and not registry.apply(uri, "vae-test", again).promote


def test_a_promotion_applied_twice_moves_the_alias_and_stamps_the_history_once(store):
    """A promote task retried after it succeeded (its answer lost on the way back)."""
    uri, v1, v2, d = _v2_judged_against_v1(store)
    registry.apply(uri, "vae-test", d)
    client = MlflowClient(uri, uri)
    stamped = client.get_model_version("vae-test", v2).tags[registry.PROMOTED_AT]
    assert registry.apply(uri, "vae-test", d).promote  # the retry
    assert client.get_model_version("vae-test", v2).tags[registry.PROMOTED_AT] == stamped
    assert aliases(uri)["champion"] == v2
    assert json.loads(client.get_registered_model("vae-test").tags["champion_history"]) == [v1, v2]
    assert registry.rollback(uri, "vae-test")["champion"] == v1  # the history walks back one promotion, not two


def test_two_folders_of_the_same_name_get_two_models_and_one_folder_keeps_its_name(tmp_path, monkeypatch):
    from vae.tracking.identity import model_name

    (tmp_path / "a" / "data").mkdir(parents=True)
    (tmp_path / "b" / "data").mkdir(parents=True)
    a, b = model_name(f"idx:{tmp_path}/a/data"), model_name(f"idx:{tmp_path}/b/data/")
    assert a != b and a.startswith("vae-idx-data-") and b.startswith("vae-idx-data-")
    monkeypatch.chdir(tmp_path / "a")
    assert model_name("idx:./data") == a and model_name("folder:data") == "vae-folder-" + a.split("-", 2)[2]
    assert model_name("mnist-5k") == "vae-mnist-5k"


def test_a_model_of_one_folder_refuses_another_until_the_switch_is_registered(store, tmp_path):
    from vae.tracking.identity import check_source

    uri, model_uri, run_id, model_id = store
    check_source(uri, "vae-test", "idx:/a/data")  # no such model yet: anything goes
    add(store, 100.0)  # a version trained on mnist-5k
    check_source(uri, "vae-test", "mnist-5k")
    with pytest.raises(ConfigError, match=r"'vae-test' holds models of mnist-5k, not of idx:/a/data: unrelated"):
        check_source(uri, "vae-test", "idx:/a/data")
    metrics = {"neg_elbo": 99.0, "fingerprint": FP, "dataset": "idx:/a/data", "split": "test"}
    registry.register(uri, "vae-test", model_uri, run_id, metrics, model_id=model_id)  # a night with switch_data
    check_source(uri, "vae-test", "idx:/a/data")
    with pytest.raises(ConfigError, match="holds models of idx:/a/data, not of mnist-5k"):
        check_source(uri, "vae-test", "mnist-5k")


def _rollback_while_held(uri: str, env: dict[str, str]) -> subprocess.Popen:
    """`vae registry rollback` started in another process (another writer), while this one holds the lock."""
    return subprocess.Popen(
        [sys.executable, "-m", "vae", "registry", "rollback", "--name", "vae-test", "--tracking-uri", uri],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("backend", ["postgresql", "sqlite file"])
def test_a_hand_rollback_waits_for_the_champion_lock_another_writer_holds(store, backend, monkeypatch):
    """Every writer of the champion takes one lock: with a PostgreSQL to share (VAE_LOCK_URL, or the team's
    Optuna storage) an advisory lock that any host sees, else a file beside the SQLite store. While another
    writer holds it, `vae registry rollback` changes nothing; once it is released, the rollback goes through."""
    uri = store[0]
    v1, v2 = add(store, 100.0), add(store, 90.0)
    for v in (v1, v2):
        assert registry.promote(uri, "vae-test", v, 0.5).promote
    with contextlib.ExitStack() as stack:
        env = {k: v for k, v in os.environ.items() if k not in ("VAE_LOCK_URL", "VAE_OPTUNA_STORAGE")}
        if backend == "postgresql":
            env["VAE_LOCK_URL"] = stack.enter_context(throwaway_postgres())
            monkeypatch.setenv("VAE_LOCK_URL", env["VAE_LOCK_URL"])
        else:
            monkeypatch.delenv("VAE_LOCK_URL", raising=False)
            monkeypatch.delenv("VAE_OPTUNA_STORAGE", raising=False)
        with champion_lock("vae-test", uri) as kind:
            assert kind.startswith({"postgresql": "postgresql advisory lock", "sqlite file": "file lock"}[backend])
            other = _rollback_while_held(uri, env)
            time.sleep(6)  # long enough for the other process to start, connect and reach the lock
            assert other.poll() is None and aliases(uri)["champion"] == v2, other.communicate()
            busy = pytest.raises(LockBusy, match="another writer has held the champion of vae-test")
            with busy, champion_lock("vae-test", uri, wait=0.5):  # this process's next writer waits too
                pass
        out, err = other.communicate(timeout=120)
        assert other.returncode == 0 and aliases(uri)["champion"] == v1, err[-2000:]


def test_two_nights_registering_one_candidate_at_once_make_one_version(store):
    """Two nights on other work folders (no night lock between them) reach the same candidate at the same
    moment: the registration lock makes find-then-create one step, so one registers and the other gets that
    version back, never a second version of one candidate key."""
    from concurrent.futures import ThreadPoolExecutor

    from vae.night.params import PipelineParams
    from vae.night.steps import register_step

    uri, model_uri, run_id, model_id = store
    client = MlflowClient(uri, uri)
    night = client.create_run(client.get_run(run_id).info.experiment_id, run_name="night").info.run_id
    trained = {"candidate_key": "k" * 16, "mlflow_run_id": run_id, "model_uri": model_uri, "model_id": model_id}
    metrics = {"neg_elbo": 100.0, "fingerprint": FP, "dataset": "mnist-5k", "split": "test", "images": 500}
    p = PipelineParams(tracking_uri=uri, model_name="vae-test")
    study = {"study": "s", "best_trial": 0, "parent_run_id": ""}
    args = (p, study, trained, metrics, {"case": "first-night"}, night)
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda _: register_step(*args), range(2)))
    # the second finds the first's version, undecided, and takes it to judge (resumed), not a new one
    assert sorted(bool(r["duplicate"] or r.get("resumed")) for r in both) == [False, True], both
    assert {r["version"] for r in both} == {"1"}
    assert [str(v.version) for v in client.search_model_versions("name='vae-test'")] == ["1"]


def test_a_version_a_dead_night_left_undecided_is_superseded_by_the_next_candidate_not_left_unjudged(store):
    """A night registers v1 and dies before the gate; the next night runs other code (a fix deployed between),
    so its candidate key differs and it registers v2 instead of judging v1. v1 must still end with a decision
    ("superseded", with the reason), while a version whose night is still running is left to that night."""
    from vae.night.params import PipelineParams
    from vae.night.steps import register_step

    uri, model_uri, run_id, model_id = store
    client = MlflowClient(uri, uri)
    experiment = client.get_run(run_id).info.experiment_id
    metrics = {"neg_elbo": 100.0, "fingerprint": FP, "dataset": "mnist-5k", "split": "test", "images": 500}
    p = PipelineParams(tracking_uri=uri, model_name="vae-test")
    study = {"study": "s", "best_trial": 0, "parent_run_id": ""}

    def night_registers(key: str) -> tuple[str, str]:
        night = client.create_run(experiment, run_name=f"night-{key}").info.run_id
        trained = {"candidate_key": key * 16, "mlflow_run_id": run_id, "model_uri": model_uri, "model_id": model_id}
        return night, register_step(p, study, trained, metrics, {"case": "first-night"}, night)["version"]

    dead, v1 = night_registers("a")
    client.set_terminated(dead, "FAILED")  # as the next night's open records a crashed night
    running, v2 = night_registers("b")  # v1 is superseded; v2's own night is still running
    _, v3 = night_registers("c")
    tags = {v: client.get_model_version("vae-test", v).tags for v in (v1, v2, v3)}
    assert tags[v1][registry.DECISION] == "superseded" and f"superseded by v{v2}" in tags[v1]["promotion.reason"]
    assert registry.DECISION not in tags[v2] and registry.DECISION not in tags[v3]
