"""The ablation studies' second task (study.py): configs/study.py's shapes at 384², with a ResNet-18 of a
quarter of the width (base width 16) and batch 4, so that a run costs about what one of configs/study.py does.

    python study.py --study=kernel_size --config configs/study_large.py --workdir runs/study_large_kernel_size

Why: on configs/study.py's 128² images the res-5 map is 4x4 and res-4 8x8, so k = 7-15 is mostly zero padding
there; the paper's k = 15 runs on 512² crops, whose res-5 map is 16x16. Here res-5 is 12x12 and res-4 24x24, so
k = 3-15 spans the range up to the map's size, and objects of 115-345 pixels are large against the narrow
backbone's valid receptive field. README, "Reproducing the paper's ablations".

Measured on the 2-core CPU: at this budget it learns too little to compare heads (base, k = 3 and k = 7, seed 0:
12.0, 12.3 and 15.2% mIoU; final training loss 0.58-0.60). Its batch of 4 flat-coloured images also leaves the
BatchNorm running statistics far from any one batch's. On a machine with an accelerator, raise
`global_batch_size` and `num_train_steps` first.
"""

from configs import study


def get_config():
    config = study.get_config()
    config.model.backbone_width = 16  # a quarter of the channels: 1/13-1/16 of the multiply-adds per pixel
    config.crop_size = (384, 384)
    config.global_batch_size = 4
    config.data.name = "synthetic_shapes/large384"
    config.data.eval_pad_size = (384, 384)
    return config
