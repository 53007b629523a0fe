"""The night, as plain functions: its parameters (params.py), the records its steps pass (records.py) and the
steps (steps.py). flows/pipeline.py wraps each step in a Prefect task; nothing here imports Prefect."""
