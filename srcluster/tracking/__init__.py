"""Experiment tracking: the only package that talks to MLflow. `tracker` holds runs, params, metrics and the spool;
`tags` names every tag; `models` is the model registry; `lineage` follows pretrains back to the data."""
