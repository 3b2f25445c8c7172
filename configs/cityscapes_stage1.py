"""Cityscapes, the paper's stage 1 of 2 (Table 9): coarse train_extra + fine train (19,998 + 2,975 = 22,973
images, `cityscapes_coarse:train_extra+cityscapes_fine`), 800x800 crops, from ImageNet weights; evaluated on the
fine validation set. Our choices (the paper gives none): 40,000 steps of 8 crops (about 14 epochs) at lr 0.01,
the backbone at 0.1x.

    python train.py --config configs/cityscapes_stage1.py --workdir runs/cityscapes_stage1 \\
        --config.model.pretrained=weights/resnet152.safetensors
"""

from configs import cityscapes


def get_config():
    config = cityscapes.get_config()
    config.data.name = "cityscapes_coarse:train_extra+cityscapes_fine"  # evaluated on cityscapes_fine
    config.num_train_steps = 40_000
    config.optimizer.learning_rate = 0.01
    config.optimizer.backbone_lr_multiplier = 0.1
    return config
