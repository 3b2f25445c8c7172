"""The demo: the built-in synthetic set (gcn_jax/data/synthetic.py), no downloads, a 2-core CPU. ResNet-18
GCN+BR with k=5 (a 96x96 input gives a 3x3 res-5 map), batch 8 of 96x96 crops of `synthetic_shapes/flat`,
trained from scratch with AdamW. Why these choices, and what the run reaches: README, "Measured: the demo".

    python train.py --config configs/synthetic.py --workdir runs/demo
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.num_classes = 6
    config.model.backbone = "resnet18"
    config.model.kernel_size = 5
    config.crop_size = (96, 96)
    config.global_batch_size = 8
    config.eval_batch_size = 8

    config.data.name = "synthetic_shapes/flat"
    config.data.scale_range = (0.75, 1.5)
    config.data.eval_pad_size = (96, 96)
    config.data.worker_count = 0  # the 2-core machine: decode in the main process

    config.num_train_steps = 3_000
    config.log_every_steps = 100
    config.eval_every_steps = 1_000
    config.checkpoint_every_steps = 500
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 1e-4
    config.optimizer.grad_clip_norm = 5.0  # a fresh model's gradient norm is ~50
    return config
