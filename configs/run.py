"""The config a training run saved (``<workdir>/config.json``): what eval.py and predict.py read when no
--config is given,

    python eval.py --workdir runs/voc      # the same as --config=configs/run.py:runs/voc

The saved values are laid onto configs/default.py's fields, so that they keep their types (tuples, optional
fields that take None) and --config.KEY=VALUE overrides apply as with any other config file.
"""

import json
import os

from ml_collections import config_dict

from configs import default


def get_config(workdir: str):
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        saved = json.load(f)
    return from_saved(saved, path)


def from_saved(saved: dict, path: str) -> config_dict.ConfigDict:
    """A saved config (JSON values, read from ``path``) laid onto configs/default.py: fields added to gcn-jax
    since it was saved keep their defaults, which is what the run used; a field this version does not know is
    a KeyError naming it."""
    config = default.get_config()
    _lay_onto(config, saved, path)
    return config


def _lay_onto(config: config_dict.ConfigDict, values: dict, path: str, prefix: str = "") -> None:
    for key, value in values.items():
        if key not in config:
            raise KeyError(f"{path}: config.{prefix}{key} is not a field of this gcn-jax version's configs")
        if isinstance(config[key], config_dict.ConfigDict):
            _lay_onto(config[key], value, path, f"{prefix}{key}.")
        else:  # JSON has lists where the configs have tuples
            config[key] = tuple(value) if isinstance(value, list) else value
