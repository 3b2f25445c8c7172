"""PASCAL VOC, stage 2 of 3 (Table 7): SBD + VOC train (`voc_sbd/aug`, 10,582 images), 512x512 crops, starting
from stage 1's best checkpoint. Our choices (the paper gives none): 30,000 steps of 8 crops (about 23 epochs)
at lr 0.001, ten times below stage 1, the whole network at one rate.

    python train.py --config configs/voc_stage2.py --workdir runs/voc_stage2   # after runs/voc_stage1
"""

from configs import voc


def get_config():
    config = voc.get_config()
    config.init_from.workdir = "runs/voc_stage1"
    config.init_from.step = "best"
    config.num_train_steps = 30_000
    config.optimizer.learning_rate = 0.001
    return config
