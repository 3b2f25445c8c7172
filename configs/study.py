"""The ablation studies' task (study.py): the demo's recipe (configs/synthetic.py: ResNet-18 from scratch, AdamW,
batch 8) on `synthetic_shapes/large` at 128², BR off, GCN k=15.

    python study.py --study=kernel_size --config configs/study.py --workdir runs/study_kernel_size

Objects are flat-coloured shapes of 30-90% of the 128-pixel side, so inside one nothing but its far-away
outline tells the class; the paper's argument (Section 3.1) for large kernels. Why these sizes: README,
"Reproducing the paper's ablations".
"""

from configs import synthetic


def get_config():
    config = synthetic.get_config()
    config.model.kernel_size = 15
    config.model.use_br = False  # Tables 1-4 are without BR; the br study switches it on
    config.crop_size = (128, 128)
    config.data.name = "synthetic_shapes/large"
    config.data.scale_range = (0.8, 1.25)
    config.data.eval_pad_size = (128, 128)

    config.num_train_steps = 1_800
    config.eval_every_steps = 0  # evaluated once, at the end, like every variant of a study
    config.checkpoint_every_steps = 600
    config.eval.examples_random = 0
    config.eval.examples_worst = 0
    return config
