"""Everything Optuna: the search space (space.py), samplers and pruners (search.py), storages and worker
coordination (storage.py), the first trials of a new study (seeds.py), the objective and its per-trial
bookkeeping (objective.py), the study run (study.py) and its summary (summary.py). MLflow comes in through
vae.tracking.study.StudyTracker, imported only when a study is tracked; untracked (--no-tracking),
untracked.NullTracker stands in for it."""

from vae.tune.search import PRUNERS, SAMPLERS, make_pruner, make_sampler
from vae.tune.space import DEFAULT_SPACE, PARAMS, load_space, suggest, to_config
from vae.tune.storage import open_storage
from vae.tune.study import TuneSettings, run_study, tune

__all__ = [
    "DEFAULT_SPACE",
    "PARAMS",
    "load_space",
    "suggest",
    "to_config",
    "PRUNERS",
    "SAMPLERS",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "TuneSettings",
    "run_study",
    "tune",
]
