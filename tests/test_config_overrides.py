"""Config values on the command line, parsed as train.py, eval.py and predict.py parse them (`cli.parse_flags`):
an optional field (one whose default is None, "off") can be set to a value, and a value set by a config file
can be unset again with `None`."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONAL = {"model.stack_width": 64, "model.pretrained": "weights/r.npz", "optimizer.grad_clip_norm": 0.5,
            "data.data_dir": "/data/tfds"}
# The command lines' flag parsing, then the up-front check of train.py; prints the optional fields.
PARSE = f"""
import json, sys
from gcn_jax import cli
from gcn_jax.training.config_checks import check_config
cli.define_flags("config")
cli.parse_flags(sys.argv)
config = cli.FLAGS.config
if not config.model.pretrained:
    check_config(config, 1)
print(json.dumps({{key: config[key.split(".")[0]][key.split(".")[1]] for key in {sorted(OPTIONAL)!r}}}))
"""


def parse(config_file, *overrides):
    return subprocess.run([sys.executable, "-c", PARSE, "--config", config_file, "--workdir", "unused",
                           *overrides], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})


def test_none_unsets_an_optional_field_that_a_config_file_set():
    r = parse("configs/synthetic.py", "--config.optimizer.grad_clip_norm=None")  # synthetic.py sets 5.0
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["optimizer.grad_clip_norm"] is None
    # Every optional field, whether it holds a value or not; `None` is not the string 'None'.
    first = parse("configs/synthetic.py", *(f"--config.{key}={value}" for key, value in OPTIONAL.items()))
    assert first.returncode == 0 and json.loads(first.stdout) == OPTIONAL, first.stderr[-3000:]
    r = parse("configs/synthetic.py", *(f"--config.{key}={value}" for key, value in OPTIONAL.items()),
              *(f"--config.{key}=None" for key in OPTIONAL))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout) == dict.fromkeys(OPTIONAL)


def test_an_optional_field_unset_by_default_takes_a_value_of_its_type():
    r = parse("configs/voc.py", "--config.optimizer.grad_clip_norm=1", "--config.model.head=stack",
              "--config.model.stack_width=64")
    assert r.returncode == 0, r.stderr[-3000:]
    values = json.loads(r.stdout)
    assert values["optimizer.grad_clip_norm"] == 1.0 and values["model.stack_width"] == 64
    r = parse("configs/voc.py", "--config.model.stack_width=wide")
    assert r.returncode == 2 and "--config.model.stack_width=wide" in r.stderr and "Traceback" not in r.stderr


def test_none_for_a_field_that_needs_a_value_names_the_key_and_the_fields_that_can_be_none():
    r = parse("configs/synthetic.py", "--config.optimizer.learning_rate=None")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "config.optimizer.learning_rate cannot be None" in r.stderr
    assert "optimizer.grad_clip_norm" in r.stderr  # one of the fields that can
