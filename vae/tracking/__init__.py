"""Everything MLflow: where runs go (store.py), the run tree of a study (runs.py), the served pyfunc model and
loading it back (models.py), the registry with its promotion gate (registry.py), and the pipeline's records
of a candidate (candidate.py). Nothing else in the package imports mlflow."""
