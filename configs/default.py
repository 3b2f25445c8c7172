"""Shared defaults. Variant configs import this and override a few fields; every field can also be set on the
command line as --config.model.kernel_size=11 (a key that does not exist is an error). An optional field is a
typed placeholder (`config_dict.placeholder(float)`: unset, None, means off); it takes a value of its type
or `None` on the command line, e.g. --config.optimizer.grad_clip_norm=None.

The model section follows the paper's final VOC model (Figure 2, ResNet-152, GCN k=15, BR on); where the
paper is silent, the choice is marked.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict()
    config.model.num_classes = 21
    # resnet18/34/50/101/152, or resnet50_gcn/101_gcn/152_gcn (Figure 5's ResNet-GCN backbone).
    config.model.backbone = "resnet152"
    # Base width of the backbone: 64 is the standard ResNet (and the only one pretrained weights fit); 16 is a
    # quarter of the channels in every layer, for training from scratch on larger images (configs/study_large.py).
    config.model.backbone_width = 64
    # Score head per stage: gcn (Fig. 2B) | conv (trivial k x k, Table 2) | stack (Tables 3-4) | base (1x1, Table 1).
    config.model.head = "gcn"
    config.model.kernel_size = 15  # k, odd; one value for all stages as in the paper
    # Per-stage k for res-2..res-5, e.g. (15, 13, 11, 9); empty: kernel_size everywhere.
    config.model.stage_kernel_sizes = ()
    config.model.stack_width = config_dict.placeholder(int)  # m of the 'stack' head; unset: input channels
    config.model.head_use_bias = False  # Table 2's parameter counts imply no bias
    config.model.use_br = True  # the 9 Boundary Refinement blocks
    # Not stated in the paper: odd 3 keeps the ResNet's pixel alignment (see gcn_jax/models/blocks.py).
    config.model.deconv_kernel_size = 3
    config.model.frozen_bn = False  # backbone BN uses running statistics only
    config.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    # ImageNet weights for the backbone (.safetensors / .npz, see README "Pretrained backbones"); unset: random init.
    config.model.pretrained = config_dict.placeholder(str)

    # Start from another run's weights (the paper's staged training: configs/voc_stage*.py): parameters and BN
    # statistics of its checkpoint `step` ('latest', 'best' or a number); optimizer, step, schedule and data
    # position start fresh. Only when this run starts, never over its own checkpoints.
    config.init_from = ml_collections.ConfigDict()
    config.init_from.workdir = config_dict.placeholder(str)  # the other run's --workdir; unset: off
    config.init_from.step = "latest"
    config.init_from.reinit_class_layers = False  # another class count: start the arrays depending on it afresh

    config.crop_size = (512, 512)  # training crop (height, width); also the model summary's input size
    config.global_batch_size = 8  # examples per optimizer step over all devices and processes
    config.eval_batch_size = 8  # global batch of full-resolution validation images

    # Training length and periods, in optimizer steps. The paper states none of them: 30k steps of 8 crops is
    # about 23 epochs of VOC+SBD trainaug.
    config.seed = 0  # parameter initialisation
    config.num_train_steps = 30_000
    config.log_every_steps = 50
    config.eval_every_steps = 2_000  # validation mIoU during training (0: only at the end)
    config.checkpoint_every_steps = 1_000  # also saved at the end, at every evaluation and on SIGTERM/SIGINT
    # A jax.profiler trace of training steps (first, last), e.g. (20, 25), into <workdir>/profile; empty: none.
    config.profile_steps = ()

    # The paper: SGD, batch 1, momentum 0.99, weight decay 5e-4; learning rate and schedule not stated. Ours
    # for 8 crops per step, and the overrides for the paper's exact recipe: README, "Configs".
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"  # sgd (the paper's) | adamw
    config.optimizer.learning_rate = 0.01  # peak, reached after warmup
    config.optimizer.momentum = 0.9  # sgd
    config.optimizer.nesterov = False  # sgd
    config.optimizer.adam_b1 = 0.9  # adamw
    config.optimizer.adam_b2 = 0.999  # adamw
    config.optimizer.weight_decay = 5e-4  # conv/dense kernels only, never biases or BN (sgd: L2; adamw: decoupled)
    config.optimizer.poly_power = 0.9  # lr = peak * (1 - step / num_train_steps) ** power
    config.optimizer.warmup_steps = 0  # linear warmup from 0 before the poly decay
    config.optimizer.backbone_lr_multiplier = 1.0  # e.g. 0.1 for a pretrained backbone
    config.optimizer.grad_accum_steps = 1  # micro-batches per step: global_batch_size is split into this many
    config.optimizer.grad_clip_norm = config_dict.placeholder(float)  # global-norm clipping; unset: off

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.keep_latest = 2  # the newest checkpoints kept
    config.checkpoint.keep_best = 2  # also kept: the best by validation mIoU

    # Evaluation (during training and eval.py).
    config.eval = ml_collections.ConfigDict()
    config.eval.scales = (1.0,)  # multi-scale test, e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75): probabilities averaged
    config.eval.flip = False  # also average the horizontally flipped prediction
    config.eval.window_size = ()  # sliding-window inference (height, width); empty: whole image at once
    config.eval.window_stride = ()  # window step (height, width); empty: half the window
    config.eval.boundary_width = 7  # Table 5: boundary = pixels within 7 px of a label edge
    config.eval.max_batches = 0  # limit for evaluations during training (0: the whole split)
    # Dense-CRF post-processing of the probabilities (Table 7's "+CRF"; gcn_jax/evaluation/crf.py), on the host,
    # image by image; needs `pip install -r requirements-crf.txt`. The paper gives no CRF parameters: these are
    # DeepLab-v2's published ResNet-101 VOC values (liangchiehchen.com/projects/DeepLabv2_resnet.html: bi_w 4,
    # bi_xy_std 67, bi_rgb_std 3, pos_w 3, pos_xy_std 1) and its 10 mean-field iterations (Chen et al., TPAMI
    # 2017, Sec. 4.1).
    config.eval.crf = False
    config.eval.crf_params = ml_collections.ConfigDict()
    config.eval.crf_params.iterations = 10  # mean-field steps
    config.eval.crf_params.bi_weight = 4.0  # w1, the appearance (bilateral) kernel
    config.eval.crf_params.bi_xy_std = 67.0  # its spatial standard deviation, pixels
    config.eval.crf_params.bi_rgb_std = 3.0  # its colour standard deviation, levels of 0-255
    config.eval.crf_params.pos_weight = 3.0  # w2, the smoothness (Gaussian) kernel
    config.eval.crf_params.pos_xy_std = 1.0  # its spatial standard deviation, pixels
    # Example pictures (eval.py's <stem>_examples.png, TensorBoard's eval/examples during training): records drawn
    # with a fixed seed, the same for every checkpoint, and the worst by pixel accuracy. 0 and 0: no pictures.
    config.eval.examples_random = 4
    config.eval.examples_worst = 4

    # Input pipeline (gcn_jax/data). Datasets are tfds builders: voc_sbd/voc, voc_sbd/aug, cityscapes_fine,
    # cityscapes_coarse, coco_voc, synthetic_shapes/default, synthetic_shapes/flat, synthetic_shapes/tiny; or a
    # mix of them, 'coco_voc+voc_sbd/aug' (parts may name their training split: 'cityscapes_coarse:train_extra'),
    # evaluated on the last part.
    config.data = ml_collections.ConfigDict()
    config.data.name = "voc_sbd/aug"
    config.data.data_dir = config_dict.placeholder(str)  # tfds data_dir; unset: $TFDS_DATA_DIR or ~/tensorflow_datasets
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    # strong: random scale, pad, random crop, flip (+ jitter if photometric); paper: pad/crop and flip only.
    config.data.augment = "strong"
    config.data.scale_range = (0.5, 2.0)
    config.data.photometric = False
    config.data.eval_pad_size = (512, 512)  # every validation image is padded to this (VOC images are <= 500)
    config.data.seed = 0  # shuffling and augmentation
    config.data.worker_count = 2  # grain worker processes (0: in the main process)
    config.data.worker_buffer_size = 2  # batches each worker prepares ahead
    config.data.read_threads = 4  # threads reading and decoding records in each worker
    return config
