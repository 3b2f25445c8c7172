"""The built-in synthetic set (gcn_jax/data/synthetic.py): trains on a 2-core CPU in about 10 minutes, no
downloads. ResNet-18 GCN+BR with k=7 (a 128x128 input gives a 4x4 res-5 map), batch 8 of 128x128 crops.

    python train.py --config configs/synthetic.py --workdir runs/demo
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.num_classes = 6
    config.model.backbone = "resnet18"
    config.model.kernel_size = 7
    config.crop_size = 128
    config.global_batch_size = 8
    config.eval_batch_size = 8

    config.data.name = "synthetic_shapes/default"
    config.data.scale_range = (0.75, 1.5)
    config.data.eval_pad_size = (128, 128)
    config.data.worker_count = 0  # the 2-core machine: decode in the main process

    config.num_train_steps = 1_500
    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.optimizer.learning_rate = 0.01
    config.optimizer.grad_clip_norm = 5.0  # a fresh model's gradient norm is ~50; unclipped, lr 0.01 diverges
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 1e-4
    return config
