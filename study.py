"""The paper's ablation studies as one command: train every variant of a table for each seed, evaluate them
the same way and write <workdir>/results.{md,csv,json,png}. Studies: kernel_size (Table 1), gcn_vs_conv
(Table 2), gcn_vs_stack (Table 3), br (Table 5). Rerunning resumes; finished runs are skipped.

    python study.py --study=kernel_size --config configs/study.py --workdir runs/study_kernel_size
    python study.py --study=kernel_size --config configs/study.py --workdir /tmp/quick --seeds=1 \\
        --config.num_train_steps=5
    python study.py --study=gcn_vs_conv --config configs/voc.py --workdir runs/voc_table2 \\
        --config.model.pretrained=weights/resnet152.safetensors
    python study.py --study=br --config configs/study.py --workdir runs/study_br --reuse=runs/study_kernel_size
    python study.py --study=kernel_size --config configs/study.py --workdir runs/study_kernel_size --report
"""

from absl import flags
from ml_collections import config_flags

from gcn_jax import cli

cli.define_flags("Config file (configs/study.py: the CPU study task; configs/voc.py for the paper's setting).",
                 distributed=True)
flags.DEFINE_enum("study", None, ["kernel_size", "gcn_vs_conv", "gcn_vs_stack", "br"], "Which ablation study.")
flags.DEFINE_integer("seeds", 2, "Seeds per variant: 0 .. seeds-1, added to config.seed and config.data.seed.")
flags.DEFINE_list("kernel_sizes", [], "The k values of the study (default: the study's own, e.g. 3,7,11,15).")
flags.DEFINE_list("reuse", [], "Other study workdirs whose finished runs of the same variant, seed and config "
                  "are taken over instead of trained again (e.g. Table 5's base and GCN k=15 from Table 1's).")
flags.DEFINE_bool("report", False, "Only rebuild the results files from the runs that finished; train nothing.")
flags.mark_flag_as_required("study")
FLAGS = flags.FLAGS


def main(argv):
    cli.start(argv)
    from gcn_jax.study import command

    command.main(FLAGS.study, FLAGS.config, FLAGS.workdir, FLAGS.seeds, FLAGS.kernel_sizes, FLAGS.report,
                 config_flags.get_config_filename(FLAGS["config"]), FLAGS.reuse)


if __name__ == "__main__":
    cli.run(main)
