"""A training config small enough for tests: synthetic_shapes/tiny (24 train, 10 validation images of 48x64),
ResNet-18 GCN+BR with k=3 on 48x48 crops, batch 4, SGD with Nesterov momentum."""

from configs import synthetic


def tiny_config(data_dir: str, **overrides):
    config = synthetic.get_config()
    config.data.name = "synthetic_shapes/tiny"
    config.data.data_dir = data_dir
    config.data.eval_pad_size = (48, 64)
    config.data.worker_count = 0
    config.crop_size = 48
    config.model.kernel_size = 3
    config.global_batch_size = 4
    config.eval_batch_size = 4
    config.num_train_steps = 8
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 100
    config.optimizer.name = "sgd"
    config.optimizer.nesterov = True
    config.optimizer.learning_rate = 0.01
    config.optimizer.grad_clip_norm = 5.0
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config
