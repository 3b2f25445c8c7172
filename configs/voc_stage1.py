"""PASCAL VOC, the paper's stage 1 of 3 (Table 7): COCO images holding the 20 VOC classes + SBD + VOC train
(`coco_voc+voc_sbd/aug`), 640x640 crops, from ImageNet weights; evaluated on VOC val. The paper states neither
learning rates nor steps: ours are 60,000 steps of 8 crops (about 4.4 epochs of the ~110k images) at lr 0.01,
the backbone at 0.1x.

    python train.py --config configs/voc_stage1.py --workdir runs/voc_stage1 \\
        --config.model.pretrained=weights/resnet152.safetensors
"""

from configs import voc


def get_config():
    config = voc.get_config()
    config.data.name = "coco_voc+voc_sbd/aug"  # evaluated on the last part: voc_sbd/aug's validation (VOC val)
    config.crop_size = (640, 640)
    config.num_train_steps = 60_000
    config.optimizer.learning_rate = 0.01
    config.optimizer.backbone_lr_multiplier = 0.1
    return config
