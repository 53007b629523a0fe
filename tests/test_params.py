"""The night's parameters live once (vae.night.params.PipelineParams): the flow, its command line, the deployments
and the README cannot drift from them."""

import re
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from vae.night.params import PipelineParams

ROOT = Path(__file__).resolve().parents[1]


def test_the_flow_takes_exactly_the_params_with_their_defaults():
    from flows.pipeline import vae_pipeline

    schema = vae_pipeline.parameters.model_dump()["properties"]
    declared = {f.name: f.default for f in fields(PipelineParams)}
    assert list(schema) == list(declared)
    assert all(f.default is not MISSING for f in fields(PipelineParams))
    assert {k: v.get("default") for k, v in schema.items()} == declared


def test_the_flow_refuses_a_parameter_that_is_not_declared():
    from flows.pipeline import vae_pipeline

    with pytest.raises(Exception, match="tune_epochs"):
        vae_pipeline(tune_epochs=3)


def test_the_command_line_and_the_readme_name_every_parameter():
    r = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.returncode == 0, r.stderr
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"python -m flows.pipeline --help(.*?)```", readme, re.S).group(1)
    for f in fields(PipelineParams):
        flag = "--" + f.name.replace("_", "-")
        assert flag in r.stdout, flag
        assert f.name.replace("_", "-") in listed, f"README's parameter list lacks {f.name}"
    # the make-run line in the README is the Makefile's
    make_args = re.search(r"^PIPELINE_ARGS \?= (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).strip()
    assert f"python -m flows.pipeline {make_args}   # = make run" in readme


@pytest.mark.parametrize(
    "args, message",
    [
        (["--param", "tune_epochs=3"], "--param tune_epochs: no such parameter of vae-pipeline"),
        (["--param", "workdir=w"], "the value is not JSON"),
        (["--trials", "0"], "trials=0 is invalid"),
    ],
)
def test_deploy_refuses_bad_parameters_before_registering_anything(args, message, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "flows.deploy", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_API_URL": "http://127.0.0.1:9/api",  # nothing listens: nothing may be registered
            "DO_NOT_TRACK": "true",
        },
    )
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1
