"""Cityscapes, stage 2 of 2 (Table 9, the paper's 76.9% single-scale): fine train (2,975 images), 800x800 crops,
starting from stage 1's best checkpoint. Our choices (the paper gives none): 20,000 steps of 8 crops (about 54
epochs) at lr 0.001.

    python train.py --config configs/cityscapes_stage2.py --workdir runs/cityscapes_stage2   # after stage 1
"""

from configs import cityscapes


def get_config():
    config = cityscapes.get_config()
    config.init_from.workdir = "runs/cityscapes_stage1"
    config.init_from.step = "best"
    config.num_train_steps = 20_000
    config.optimizer.learning_rate = 0.001
    return config
