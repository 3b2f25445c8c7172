"""PASCAL VOC, stage 3 of 3 (Table 7, the paper's 80.3% single-scale GCN+BR): VOC train alone (`voc_sbd/voc`,
1,464 images), 512x512 crops, starting from stage 2's best checkpoint. Our choices (the paper gives none):
10,000 steps of 8 crops (about 55 epochs) at lr 0.0001.

    python train.py --config configs/voc_stage3.py --workdir runs/voc_stage3   # after runs/voc_stage2
"""

from configs import voc


def get_config():
    config = voc.get_config()
    config.data.name = "voc_sbd/voc"
    config.init_from.workdir = "runs/voc_stage2"
    config.init_from.step = "best"
    config.num_train_steps = 10_000
    config.optimizer.learning_rate = 0.0001
    return config
