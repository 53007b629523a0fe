"""The night's records (vae/records.py): the check that the pipeline test runs on every record a night passed
finds what is wrong, nested records included, and leaves the open Metrics record open."""

from vae.night import steps
from vae.records import Metrics, NightRecord, NightResult, Registered, Winner, problems


def night_result(**changes):
    record: NightRecord = {"run_id": "r", "champion": None, "name": "vae-x", "tracking_uri": "sqlite:///m.db"}
    base = dict(
        params={},
        night_run_id="n",
        study=None,
        night=None,
        metrics=None,
        registered=None,
        decision=None,
        record=record,
        seconds={},
    )
    return {**base, **changes}


def test_a_complete_record_has_no_problems():
    assert problems(NightResult, night_result()) == []


def test_a_missing_an_undeclared_and_a_nested_wrong_key_are_each_named():
    bad = night_result(registered={"duplicate": True, "version": "1", "name": "vae-x", "tracking_uri": "u"}, extra=1)
    del bad["seconds"]
    assert problems(NightResult, bad) == [
        "NightResult: missing 'seconds'",
        "NightResult: undeclared 'extra'",
        "NightResult.registered: missing 'run_id'",
    ]
    assert problems(Registered, []) == ["Registered: expected a dict, got list"]


def test_metrics_are_open_to_a_kinds_own_terms():
    assert problems(Metrics, {"neg_elbo": 90.0, "bce": 80.0}) == []


def test_the_winner_is_read_from_its_record():
    study = {k: f"value of {k}" for k in Winner.__annotations__} | {"counts": {}, "seconds": 1.0}
    assert steps.winner(study) == {k: f"value of {k}" for k in Winner.__annotations__}
