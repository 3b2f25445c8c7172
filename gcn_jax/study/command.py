"""What `study.py` does once its flags are parsed: check the config, run the grid (or only collect the finished
runs for --report), write the results and print the table."""

from __future__ import annotations

import jax

from gcn_jax import parallel
from gcn_jax.errors import InputError
from gcn_jax.study import grid, report, runner


def parse_kernel_sizes(values: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise InputError(f"--kernel_sizes={','.join(values)}: expected odd integers, e.g. 3,7,11,15") from None


def main(study_name: str, config, workdir: str, seeds: int, kernel_sizes: list[str], report_only: bool,
         config_file: str, reuse: list[str] = ()) -> list[str]:
    """Run (or, with ``report_only``, only report) the study; the results files written."""
    from gcn_jax.training.config_checks import check_config

    study = grid.get_study(study_name)
    ks = parse_kernel_sizes(kernel_sizes)
    if seeds < 1:
        raise InputError(f"--seeds={seeds}: expected at least 1")
    variants = study.variants(ks, config.model.kernel_size)
    mesh = parallel.make_mesh()
    for variant in variants:  # every variant's config is checked before the first one trains
        check_config(grid.variant_config(config, variant, 0), mesh.size, jax.process_count())
    if report_only:
        runner.check_study_workdir(workdir, study, config, record=False)
        results, missing = runner.collect_results(study, config, workdir, seeds, ks)
    else:  # the results in hand: on several hosts, the files process 0 just wrote may not show yet elsewhere
        results, missing = runner.run_study(study, config, workdir, seeds, ks, reuse=tuple(reuse)), []
    if not results:
        raise InputError(f"{workdir}: no finished run of the study {study.name!r} with this config and these seeds; "
                         "run it without --report first")
    about = {"config": config_file, "num_train_steps": config.num_train_steps, "seeds": list(range(seeds)),
             "kernel_sizes": sorted({v.k for v in variants if v.k is not None})}
    paths = report.write_report(workdir, study, variants, results, missing, about) if jax.process_index() == 0 else []
    if paths:
        with open(paths[2]) as f:
            print(f.read())
        print("wrote " + ", ".join(paths))
    return paths
