"""The night, as plain functions: its parameters (params.py) and its steps (steps.py), which pass the records of
vae/records.py. flows/pipeline.py wraps each step in a Prefect task; nothing here imports Prefect."""
