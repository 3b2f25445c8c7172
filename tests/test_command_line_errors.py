"""How the command lines fail: errors raised on purpose print their message alone (no traceback) with a
documented exit code, --verbose brings the traceback back, and a run stopped by SIGTERM exits 75 so that a
scheduler can tell it is unfinished."""

import asyncio
import functools
import logging as std_logging
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from gcn_jax import cli, errors
from gcn_jax.training.config_checks import ConfigError
from gcn_jax.training.loop import NonFiniteLossError, TrainingInterrupted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, timeout=300):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT})


def test_report_prints_the_message_of_errors_raised_on_purpose_and_the_traceback_of_bugs(capsys):
    assert errors.report(ConfigError("invalid config:\n  config.seed = -1")) == 2
    assert capsys.readouterr().err == "error: invalid config:\n  config.seed = -1\n"
    assert errors.report(NonFiniteLossError("non-finite training loss nan at step 3")) == 3
    assert capsys.readouterr().err == "error: non-finite training loss nan at step 3\n"
    assert errors.report(TrainingInterrupted("SIGTERM received: saved step 5")) == 75
    assert capsys.readouterr().err == "stopped: SIGTERM received: saved step 5\n"
    try:
        raise KeyError("a bug")
    except KeyError as e:
        assert errors.report(e) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    try:
        raise ConfigError("invalid config")
    except ConfigError as e:
        assert errors.report(e, verbose=True) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_misspelt_config_key_is_one_line_not_a_chain_of_tracebacks(tmp_path):
    r = run("train.py", "--config", "configs/synthetic.py", "--workdir", str(tmp_path / "w"),
            "--config.optimizer.learning_rat=0.1")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert 'Did you mean "learning_rate" instead of "learning_rat"?' in r.stderr
    assert r.stderr.count("\n") <= 6, r.stderr
    r = run("train.py", "--config", "configs/missing.py", "--workdir", str(tmp_path / "w"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "configs/missing.py" in r.stderr


def test_errors_raised_on_purpose_print_the_message_alone_and_verbose_the_traceback(tmp_path):
    r = run("eval.py", "--config", "configs/synthetic.py", "--workdir", str(tmp_path / "empty"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"error: no checkpoints in {tmp_path / 'empty'}" in r.stderr
    r = run("eval.py", "--config", "configs/synthetic.py", "--workdir", str(tmp_path / "empty"), "--verbose")
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr
    r = run("train.py", "--config", "configs/synthetic.py", "--workdir", str(tmp_path / "w"),
            "--config.model.kernel_size=4")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: invalid config:\n  config.model: kernel_size for res2 must be a positive odd integer" in r.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_exits_75_and_resumes(data_dir, tmp_path):
    workdir = tmp_path / "run"
    args = ["train.py", "--config", "configs/synthetic.py", "--config.data.name=synthetic_shapes/tiny",
            f"--config.data.data_dir={data_dir}", "--config.data.eval_pad_size=48,64", "--config.crop_size=48,48",
            "--config.model.kernel_size=3", "--config.global_batch_size=4", "--config.eval_batch_size=4",
            "--config.log_every_steps=1", "--config.eval_every_steps=0", "--workdir", str(workdir)]
    process = subprocess.Popen([sys.executable, *args, "--config.num_train_steps=1000"], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (workdir / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (workdir / "metrics.jsonl").exists(), "training did not start"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=240)
    finally:
        process.kill()
    assert process.returncode == errors.EXIT_INTERRUPTED, stderr[-3000:]
    assert "stopped: SIGTERM received: saved step" in stderr and "Traceback" not in stderr
    saved = int(stderr.split("saved step ")[1].split()[0])
    r = run(*args, f"--config.num_train_steps={saved + 2}")  # resumes and finishes
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())[-1] == saved + 2


def test_eval_refuses_an_output_it_cannot_write_before_evaluating(run_40, tmp_path):
    config, workdir, _ = run_40
    output = tmp_path / "no_such_folder" / "eval.json"
    r = run("eval.py", "--config", "configs/synthetic.py", "--config.data.name=synthetic_shapes/tiny",
            f"--config.data.data_dir={config.data.data_dir}", "--config.data.eval_pad_size=48,64",
            "--config.crop_size=48,48", "--config.model.kernel_size=3", "--config.eval_batch_size=4",
            "--workdir", workdir, f"--output={output}")
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"error: cannot write {output}: No such file or directory" in r.stderr
    assert "mIoU" not in r.stdout  # nothing was evaluated


def test_predict_carries_on_past_an_unreadable_image_and_exits_2_with_the_list(run_40, tmp_path):
    config, workdir, _ = run_40
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), (90, 140, 30)).save(images / "a.png")
    (images / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    Image.new("RGB", (20, 20), (10, 10, 200)).save(images / "c.png")
    out = tmp_path / "out"
    r = run("predict.py", "--config", "configs/synthetic.py", "--config.data.name=synthetic_shapes/tiny",
            f"--config.data.data_dir={config.data.data_dir}", "--config.model.kernel_size=3", "--workdir", workdir,
            f"--output={out}", str(images))
    assert r.returncode == 2, r.stderr[-3000:]
    assert "2 images, checkpoint step 40" in r.stdout
    assert f"error: 1 of 3 images could not be read:\n  {images / 'b.jpg'}: not a readable image" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.png", "c_mask.png", "c_overlay.png"]


def test_predict_refuses_a_server_format_for_another_class_count_before_predicting(run_40, tmp_path):
    config, workdir, _ = run_40
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20)).save(image)
    r = run("predict.py", "--config", "configs/synthetic.py", "--config.data.name=synthetic_shapes/tiny",
            f"--config.data.data_dir={config.data.data_dir}", "--config.model.kernel_size=3", "--workdir", workdir,
            f"--output={tmp_path / 'out'}", "--format=voc", str(image))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "error: --format=voc writes the 21 classes of its benchmark; this model predicts 6" in r.stderr
    assert not (tmp_path / "out").exists()


def _shown_by_console(context, verbose) -> list:
    """What the console filter lets through when asyncio reports ``context`` as it does for a task nobody
    awaited."""
    shown = []
    handler = std_logging.Handler()
    handler.emit = shown.append
    handler.addFilter(functools.partial(cli.keep_library_record, verbose=verbose))
    logger = std_logging.getLogger("asyncio")
    logger.addHandler(handler)
    loop = asyncio.new_event_loop()
    try:
        loop.default_exception_handler(context)
    finally:
        loop.close()
        logger.removeHandler(handler)
    return shown


def test_write_tasks_orbax_abandoned_after_a_failed_save_are_not_a_traceback_each():
    # As asyncio logged it in CI, once per array of the checkpoint, after the run had said the disk was full.
    abandoned = {"message": "Task exception was never retrieved",
                 "exception": ValueError('OUT_OF_RANGE: Error writing "params.x/0" ... File too large'),
                 "future": "<Task finished name='Task-1834' coro=<async_serialize_from_host() done, defined at "
                           "/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py:126>>"}
    assert _shown_by_console(abandoned, verbose=False) == []
    assert len(_shown_by_console(abandoned, verbose=True)) == 1
    ours = {**abandoned, "future": "<Task finished name='Task-7' coro=<prefetch() done, defined at "
                                   "/work/gcn_jax/data/pipeline.py:10>>"}
    [record] = _shown_by_console(ours, verbose=False)
    assert record.exc_info[1] is ours["exception"]


def _raised_at(filename: str, exception: Exception) -> Exception:
    """``exception`` raised from code that claims to live in ``filename``, so its traceback names that file."""
    scope = {"exception": exception}
    try:
        exec(compile("raise exception", filename, "exec"), scope)
    except type(exception) as e:
        return e
    raise AssertionError("not raised")


def test_gatherings_of_write_tasks_orbax_abandoned_are_not_a_traceback_each():
    # As asyncio logged it in CI: the future that gathered orbax's write tasks names no orbax file itself; its
    # exception's traceback does.
    orbax_file = "/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py"
    error = _raised_at(orbax_file, ValueError('OUT_OF_RANGE: Error writing "params.x/0" ... File too large'))
    gathered = {"message": "_GatheringFuture exception was never retrieved", "exception": error,
                "future": f"<_GatheringFuture finished exception={error!r}>"}
    assert _shown_by_console(gathered, verbose=False) == []
    assert len(_shown_by_console(gathered, verbose=True)) == 1
    ours = _raised_at("/work/gcn_jax/data/pipeline.py", ValueError("a batch could not be decoded"))
    [record] = _shown_by_console({**gathered, "exception": ours, "future": f"<_GatheringFuture finished "
                                                                          f"exception={ours!r}>"}, verbose=False)
    assert record.exc_info[1] is ours
