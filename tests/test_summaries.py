"""The closing lines a night prints: where to look at what it registered."""

from vae import summaries


def _result(tracking_uri: str, promote: bool) -> dict:
    registered = {"tracking_uri": tracking_uri, "name": "vae-mnist", "version": "3", "run_id": "r1"}
    return {"registered": registered, "decision": {"promote": promote}, "night_run_id": "n1"}


def test_hint_for_a_server_points_at_the_server_not_a_local_ui():
    hint = summaries.mlflow_hint(_result("http://127.0.0.1:6101", promote=True))
    assert "open http://127.0.0.1:6101 " in hint
    assert "mlflow ui" not in hint and ":5000" not in hint
    assert "vae-mnist v3 (champion)" in hint


def test_hint_for_a_local_store_says_how_to_serve_its_ui():
    hint = summaries.mlflow_hint(_result("sqlite:////data/mlflow.db", promote=False))
    assert "`mlflow ui --backend-store-uri sqlite:////data/mlflow.db` and open http://127.0.0.1:5000" in hint
    assert "(challenger)" in hint


def test_hint_never_shows_a_password():
    hint = summaries.mlflow_hint(_result("https://ann:s3cret@mlflow.example.org", promote=True))
    assert "s3cret" not in hint and "open https://ann:***@mlflow.example.org" in hint
