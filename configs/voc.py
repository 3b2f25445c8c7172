"""PASCAL VOC 2012 (+ SBD): the paper's final model, ResNet-152 GCN+BR with k=15 on 512x512 crops."""

from configs import default


def get_config():
    config = default.get_config()
    config.model.num_classes = 21
    config.model.backbone = "resnet152"
    config.model.kernel_size = 15
    config.crop_size = (512, 512)
    return config
