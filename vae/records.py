"""The records the night's steps (vae/night/steps.py) pass to each other, one definition each; docs/glossary.md
names the words.

They are TypedDicts, not classes: each is a plain JSON-able dict at run time, which is what Prefect persists and
what a cached task hands back, and a type checker reads the keys from here. `problems()` checks a value against
its record (the tests run a night and check every record it passed); `Metrics` is open, since a model kind's
terms (vae/models.py: TERMS) name its own keys.
"""

import types
import typing
from typing import Any, NotRequired, TypedDict


class Skipped(TypedDict):
    file: str
    why: str


class SplitInfo(TypedDict):
    size: int
    per_class: list[int]


class DataInfo(TypedDict):
    """fetch: what `vae data info` shows of the night's data; its fingerprint keys everything after."""

    dataset: str
    source: str
    split_seed: int
    subset: int | None
    splits: dict[str, SplitInfo]
    fingerprint: str
    skipped: list[Skipped]


class RegisteredTrial(TypedDict):
    """The study's trial that a registered version came from (the study's user attr nightly.registered)."""

    trial: int
    value: float
    version: str
    code: NotRequired[str | None]  # the code_version it was made by (absent: registered before it was recorded)


class NightPlan(TypedDict):
    """plan: the night's case and why, its study, and the trial count the study must reach (`target`)."""

    case: str
    reason: str
    study: str
    settings_hash: str
    trials_before: int
    target: int
    registered: RegisteredTrial | None
    seeded: list[dict[str, Any]]  # the trials queued first in a new study (vae/tune/seeds.py)
    warm_started: list[dict[str, Any]]
    warm_start_from: NotRequired[str | None]


class Verdict(TypedDict):
    """after the search: whether the night trains (and so registers) a candidate."""

    case: str
    reason: str
    train: bool


class Night(NightPlan):
    """The plan with the search's verdict: what the night's run records as nightly.case and nightly.reason."""

    train: bool
    skipped_files: int


class TrialRecord(TypedDict):
    trial: int
    value: float
    config: dict[str, Any] | None
    checkpoint: str | None
    best_epoch: int | None
    mlflow_run_id: str | None


class StudySummary(TypedDict):
    """tune: `vae tune --json`'s summary of the study after this night's trials (vae/tune/summary.py)."""

    study: str
    storage: str
    n_trials: int
    trials: int
    counts: dict[str, int]
    surplus: int
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] | None
    best_config: dict[str, Any] | None
    best_checkpoint: str | None
    best_epoch: int | None
    best_run_id: str | None
    best_code_version: str | None  # the code the best trial was trained by (vae/code.py)
    recipe: TrialRecord | None
    tracking: bool
    parent_run_id: str | None
    experiment_id: str | None
    tracking_uri: str | None
    best_model_uri: str | None
    best_model_id: str | None
    out: str
    trials_run_here: int
    seconds: float
    search_space: dict[str, Any]
    figures_skipped: list[str]
    fingerprint: str
    finish_seconds: NotRequired[float]


class Winner(TypedDict):
    """What the candidate step reads of a study: the same for every night that finds the same best trial."""

    best_trial: int | None
    best_config: dict[str, Any] | None
    best_checkpoint: str | None
    best_run_id: str | None
    best_model_uri: str | None
    best_model_id: str | None
    best_code_version: str | None


class Trained(TypedDict):
    """candidate: the model the night offers, as trained (the winning trial's run, or a `vae train` of its
    config where the trial left nothing here); history.json's summary with its MLflow run and logged model."""

    out: str
    checkpoint: str | None
    best_checkpoint: str | None
    best_epoch: int
    stopped_early: bool
    fingerprint: str
    epochs_run: int
    seconds: float
    metrics: dict[str, float]
    config: dict[str, Any]
    figures: dict[str, Any]
    mlflow_run_id: str
    model_uri: str
    model_id: str
    tracking_uri: str
    candidate_key: str
    trial: NotRequired[int]  # the trial it was
    epoch_log_seconds: NotRequired[float]  # trained again here


class Metrics(TypedDict, total=False):
    """evaluate: the test metrics. Open: the kind's TERMS add their own keys beside these."""

    neg_elbo: float
    recon: float
    kl: float
    recon_at_mean: float
    iw_nll: float
    iw_samples: int
    active_units: int
    split: str
    images: int
    dataset: str
    fingerprint: str
    figures: dict[str, Any]
    sample_fid: float
    sample_class_entropy: float
    classifier_accuracy: float
    recipe_neg_elbo: float  # with_baseline(): the seed recipe on the same images, and the gain over it
    gain_over_recipe: float


class Baseline(TypedDict):
    """baseline: the seed recipe at the night's budget on this data, kept per candidate key in the work folder."""

    candidate_key: str
    trial: int | None
    checkpoint: str
    metrics: Metrics


class Registered(TypedDict):
    """register: the candidate's registered version (alias challenger), or the one already registered from the
    same candidate key (duplicate: nothing new, no run ids)."""

    duplicate: bool
    version: str
    name: str
    tracking_uri: str
    run_id: str | None
    resumed: NotRequired[bool]  # registered by an earlier night that never finished deciding on it
    awaits: NotRequired[str]  # a duplicate whose sign-off a suspended night (this flow run id) waits for
    model_uri: NotRequired[str]
    model_id: NotRequired[str]
    evaluation_run_id: NotRequired[str]
    night_run_id: NotRequired[str]


class Approval(TypedDict):
    """A reviewer's answer to the sign-off form, stamped when it came."""

    decision: str  # approve | reject
    reviewer: str
    comment: str
    time: str


class Decision(TypedDict):
    """registry.Decision.as_dict(): the gate's verdict, then (promote) what was done."""

    promote: bool
    reason: str
    candidate: str
    candidate_value: float
    champion: str | None
    champion_value: float | None
    min_improvement: float
    forced: bool
    interval: dict[str, Any] | None
    approval: Approval | None
    improvement: float | None
    metric: str


class Gated(TypedDict):
    """gate: the decision (nothing moved yet), the comparison's columns and its folder."""

    decision: Decision
    columns: list[Any]
    folder: str


class NightRecord(TypedDict):
    """close_night: the night's MLflow run and who is champion after it."""

    run_id: str
    champion: str | None
    name: str
    tracking_uri: str


class NightResult(TypedDict):
    """What the flow returns: every night, quiet or not, has every key (None where a stage did not run)."""

    params: dict[str, Any]
    night_run_id: str
    study: StudySummary
    night: Night
    metrics: Metrics | None
    registered: Registered | None
    decision: Decision | None
    record: NightRecord
    seconds: dict[str, float]


OPEN: frozenset[type] = frozenset({Metrics})


def problems(record: type, value: Any, where: str = "") -> list[str]:
    """What is wrong with `value` as a `record`: missing keys, undeclared keys (except in OPEN records), and the
    same for the records nested in it. Types of the leaves are not checked: JSON has already decided them."""
    where = where or record.__name__
    if not isinstance(value, dict):
        return [f"{where}: expected a dict, got {type(value).__name__}"]
    hints = typing.get_type_hints(record)
    found = [f"{where}: missing {k!r}" for k in sorted(record.__required_keys__ - value.keys())]
    if record not in OPEN:
        found += [f"{where}: undeclared {k!r}" for k in sorted(value.keys() - hints.keys())]
    for key, hint in hints.items():
        nested = _record_of(hint)
        if nested is not None and value.get(key) is not None:
            found += problems(nested, value[key], f"{where}.{key}")
    return found


def _record_of(hint: Any) -> type | None:
    """The TypedDict in a hint such as `Registered | None` or `NotRequired[Approval]`, if there is one."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType, NotRequired):
        inner = [h for h in typing.get_args(hint) if h is not type(None)]
        return _record_of(inner[0]) if len(inner) == 1 else None
    return hint if typing.is_typeddict(hint) else None
