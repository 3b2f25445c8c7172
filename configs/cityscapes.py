"""Cityscapes (fine): 19 classes, k=25 (an 800x800 crop gives a 25x25 res-5 map), 800x800 crops. Evaluation as
in the paper: each 1024x2048 image as four 1024x1024 windows (at x = 0, 342, 684, 1024), logits averaged where
they overlap (the paper does not state the overlap or the fusion rule)."""

from configs import default


def get_config():
    config = default.get_config()
    config.model.num_classes = 19
    config.model.backbone = "resnet152"
    config.model.kernel_size = 25
    config.crop_size = (800, 800)
    config.data.name = "cityscapes_fine"
    config.data.eval_pad_size = (1024, 2048)
    config.eval.window_size = (1024, 1024)
    config.eval.window_stride = (1024, 342)
    return config
