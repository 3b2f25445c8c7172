"""The config a training run saved (``<workdir>/config.json``): what eval.py and predict.py read when no
--config is given,

    python eval.py --workdir runs/voc      # the same as --config=configs/run.py:runs/voc

The saved values are laid onto configs/default.py's fields, so that they keep their types (tuples, optional
fields that take None) and --config.KEY=VALUE overrides apply as with any other config file.
"""

import copy
import json
import os

from ml_collections import config_dict

from configs import default

# Fields added to configs/default.py after runs had been saved, each with the value that reproduces what those
# runs did (`with_added_fields`; study.py compares saved configs after it). A field whose default is a new
# behaviour must not be listed with that default.
ADDED_FIELDS = {"model.backbone_width": 64}


def with_added_fields(saved: dict) -> dict:
    """A copy of a saved config (JSON values) with the `ADDED_FIELDS` it lacks set to their listed values;
    anything else it lacks stays missing, and a malformed section is left as it is."""
    completed = copy.deepcopy(saved)
    for key, value in ADDED_FIELDS.items():
        *sections, field = key.split(".")
        node = completed
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and field not in node:
            node[field] = value
    return completed


def get_config(workdir: str):
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        saved = json.load(f)
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
