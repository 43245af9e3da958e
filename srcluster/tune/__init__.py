"""Hyperparameter search over a training stage with Ray Tune (`srcluster tune SEARCH.yml`): `space` reads the search
file, `trial` is what each trial runs, `run` drives the Tuner and registers the best generator, `report` renders it."""
