"""Everything MLflow: where runs go (store.py), what runs share (runs.py), a training run as it happens
(live.py), the runs of a study (study.py), a pipeline night's run tree (night_runs.py), the served pyfunc
model and loading it back (models.py), the registry with its promotion gate (registry.py), and the pipeline's
records of a candidate (candidate.py). Nothing else in the package imports mlflow."""
