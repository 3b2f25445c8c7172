"""Run a study: every variant x seed is an ordinary training run (`loop.train_and_evaluate`) in its own
sub-workdir, <workdir>/<variant>/seed<N>, so an interrupted study resumes where it stopped and a finished run is
skipped. Each finished run leaves `study_result.json` beside its checkpoints: the final evaluation on the whole
validation split (the same for every variant), the parameter counts and the training time.

The study's workdir keeps `study.json`, the study's name and base config: running again with another config
into the same workdir is refused rather than mixing two experiments in one table.
"""

from __future__ import annotations

import json
import os
import time

import jax
from absl import logging

from gcn_jax.errors import InputError
from gcn_jax.study.grid import Study, Variant, variant_config
from gcn_jax.training.loop import NonFiniteLossError, train_and_evaluate

RESULT_FILE = "study_result.json"
SECONDS_FILE = "study_seconds.json"  # training time accumulated over the attempts of one run
STUDY_FILE = "study.json"

SUMMARY_KEYS = ("miou", "pixel_accuracy", "mean_class_accuracy", "boundary_accuracy", "interior_accuracy",
                "per_class_iou")


def run_dir(workdir: str, variant: Variant, seed: int) -> str:
    return os.path.join(workdir, variant.name, f"seed{seed}")


def write_json(path: str, data) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file renamed over it); on process 0 only,
    as the processes of a multi-host study share the workdir."""
    if jax.process_index() != 0:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def check_study_workdir(workdir: str, study: Study, config, record: bool = True) -> None:
    """Refuse a workdir whose study.json holds another study, or this one with another config; otherwise
    record them there when ``record`` (a study that trains), or, without it (--report), refuse a workdir that
    holds no study."""
    path = os.path.join(workdir, STUDY_FILE)
    mine = {"study": study.name, "config": json.loads(config.to_json_best_effort())}
    if not record and not os.path.exists(path):
        raise InputError(f"{workdir}: no study has run there ({STUDY_FILE} is missing); run it without --report first")
    if os.path.exists(path):
        saved = read_json(path)
        if saved.get("study") != study.name:
            raise InputError(f"{workdir} holds the study {saved.get('study')!r}, not {study.name!r}: use another "
                             "--workdir")
        from configs.run import with_added_fields  # here, like segmenter.py: configs/ is the repository's

        differences = _differences(with_added_fields(saved.get("config", {})), mine["config"])
        if differences:
            raise InputError(f"{workdir} holds this study run with another config ({'; '.join(differences[:5])}): "
                             "use another --workdir, or the same config to resume or report it")
        return
    os.makedirs(workdir, exist_ok=True)
    write_json(path, mine)


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            found += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            found.append(f"{prefix}{key}: {x!r} then, {y!r} now")
    return found


def finished_result(directory: str, config) -> dict | None:
    """The run's result when it finished all of ``config``'s steps, else None."""
    path = os.path.join(directory, RESULT_FILE)
    if not os.path.exists(path):
        return None
    result = read_json(path)
    return result if result.get("step") == config.num_train_steps else None


def param_counts(config) -> dict[str, int]:
    """Parameters of the whole network, of its four score heads, and of the res-5 head (Table 2's count)."""
    from gcn_jax.models import build_model
    from gcn_jax.models.summary import abstract_variables, count_params

    height, width = config.crop_size
    params = abstract_variables(build_model(config.model), (1, height, width, 3))["params"]
    heads = {name: tree for name, tree in params.items() if name.startswith("head_")}
    return {"params": count_params(params), "head_params": count_params(heads),
            "res5_head_params": count_params(heads.get("head_res5", {}))}


def reusable_result(directory: str, config) -> dict | None:
    """The result of the finished run in ``directory`` (another study's) when it was trained with exactly
    ``config``, marked with where it came from; else None."""
    done = finished_result(directory, config)
    config_path = os.path.join(directory, "config.json")
    if done is None or not os.path.exists(config_path):
        return None
    from configs.run import with_added_fields

    if with_added_fields(read_json(config_path)) != json.loads(config.to_json_best_effort()):
        return None
    return {**done, "reused_from": done.get("reused_from", os.path.abspath(directory))}


def run_variant(config, variant: Variant, seed: int, workdir: str, train=None, evaluate=None,
                reuse: tuple[str, ...] = ()) -> dict:
    """Train (or resume) one variant x seed and evaluate it; a finished run is read back, not trained again,
    and so is one of the studies in ``reuse`` trained with the same config (Table 5's base and GCN are Table
    1's). ``train(config, workdir) -> summary | None`` and ``evaluate(config, workdir) -> (summary, step)``
    default to the training loop and the checkpoint evaluation."""
    config = variant_config(config, variant, seed)
    directory = run_dir(workdir, variant, seed)
    done = finished_result(directory, config)
    if done is not None:
        logging.info("study: %s seed %d finished earlier", variant.name, seed)
        return done
    os.makedirs(directory, exist_ok=True)
    for other in reuse:
        done = reusable_result(run_dir(other, variant, seed), config)
        if done is not None:
            logging.info("study: %s seed %d reused from %s", variant.name, seed, other)
            write_json(os.path.join(directory, "config.json"), json.loads(config.to_json_best_effort()))
            write_json(os.path.join(directory, RESULT_FILE), done)
            return done
    train, evaluate = train or train_and_evaluate, evaluate or evaluate_checkpoint
    logging.info("study: training %s seed %d in %s", variant.name, seed, directory)
    seconds_path = os.path.join(directory, SECONDS_FILE)
    seconds = read_json(seconds_path)["train_seconds"] if os.path.exists(seconds_path) else 0.0
    start, failed = time.perf_counter(), None
    try:
        summary = train(config, directory)
    except NonFiniteLossError as e:  # recorded as a result: the other variants still run; deleting
        summary, failed = None, str(e)  # study_result.json retries it
    finally:  # also the time of an interrupted attempt counts
        seconds += time.perf_counter() - start
        write_json(seconds_path, {"train_seconds": seconds})
    step = config.num_train_steps
    if failed:
        summary = dict.fromkeys(SUMMARY_KEYS)
    elif summary is None or config.eval.max_batches:  # a run finished earlier, or evaluated on part of the split
        summary, step = evaluate(config, directory)
    result = {"variant": variant.name, "kind": variant.kind, "k": variant.k, "seed": seed, "step": step,
              **{key: summary[key] for key in SUMMARY_KEYS}, **param_counts(config), "train_seconds": seconds,
              **({"failed": failed} if failed else {})}
    write_json(os.path.join(directory, RESULT_FILE), result)
    return result


def evaluate_checkpoint(config, directory: str) -> tuple[dict, int]:
    """The newest checkpoint of ``directory`` evaluated on the whole validation split."""
    from gcn_jax import parallel
    from gcn_jax.evaluation.evaluate import Evaluator
    from gcn_jax.training.checkpoints import load_variables

    mesh = parallel.make_mesh()
    model, variables, step = load_variables(config, directory, "latest", mesh)
    summary, _ = Evaluator(config, model, mesh).evaluate(variables)
    return summary, step


def run_study(study: Study, config, workdir: str, seeds: int, kernel_sizes=(), train=None, evaluate=None,
              reuse: tuple[str, ...] = ()) -> list[dict]:
    """Every variant x seed of ``study`` (seeds 0 .. seeds-1), in order; their results."""
    for other in reuse:
        if not os.path.isfile(os.path.join(other, STUDY_FILE)):
            raise InputError(f"--reuse={other}: not a study workdir (it has no {STUDY_FILE})")
    check_study_workdir(workdir, study, config)
    results = []
    for variant in study.variants(kernel_sizes, config.model.kernel_size):
        for seed in range(seeds):
            results.append(run_variant(config, variant, seed, workdir, train, evaluate, reuse))
    return results


def collect_results(study: Study, config, workdir: str, seeds: int, kernel_sizes=()) -> tuple[list[dict], list[str]]:
    """The finished runs of the grid (without training anything) and the names of those not finished."""
    results, missing = [], []
    for variant in study.variants(kernel_sizes, config.model.kernel_size):
        for seed in range(seeds):
            done = finished_result(run_dir(workdir, variant, seed), variant_config(config, variant, seed))
            if done is None:
                missing.append(f"{variant.name}/seed{seed}")
            else:
                results.append(done)
    return results, missing
