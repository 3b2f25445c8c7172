"""Input-pipeline throughput on VOC-sized data: 500x375 JPEGs, trained on as 512x512 crops.

    python benchmarks/input_pipeline.py                       # workers 0, 1, 2; batch 8; strong augmentation
    python benchmarks/input_pipeline.py --workers 0,4,8 --augment paper --photometric

Writes a VOCdevkit tree of generated 500x375 JPEGs (synthetic_shapes scenes, JPEG quality 90, about the size
of VOC's) and palette-PNG masks into a temporary folder, builds `voc_sbd/voc` from it, then times the
training loader: images/s over --steps batches after --warmup batches, in total and per worker process.
"""

import argparse
import io
import os
import tempfile
import time

import numpy as np
from PIL import Image


def write_voc_tree(root: str, count: int) -> None:
    from gcn_jax.data import synthetic
    from gcn_jax.labels import palette_image

    cfg = synthetic.SyntheticShapesConfig(name="bench", height=375, width=500, max_objects=6)
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(voc, d), exist_ok=True)
    ids = [f"2012_{i:06d}" for i in range(count)]
    sizes = []
    for i, image_id in enumerate(ids):
        image, label = synthetic.render(cfg, "train", i)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=90)
        sizes.append(buf.tell())
        with open(os.path.join(voc, "JPEGImages", image_id + ".jpg"), "wb") as f:
            f.write(buf.getvalue())
        palette_image(label).save(os.path.join(voc, "SegmentationClass", image_id + ".png"))
    for split, part in (("train", ids), ("val", ids[:1])):
        with open(os.path.join(voc, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
            f.write("\n".join(part) + "\n")
    print(f"wrote {count} JPEGs of 500x375, mean {np.mean(sizes) / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts to time")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--read_threads", type=int, default=4)
    parser.add_argument("--augment", default="strong", choices=["strong", "paper"])
    parser.add_argument("--photometric", action="store_true")
    args = parser.parse_args()

    from configs import default
    from gcn_jax.data import pipeline
    from gcn_jax.data.build import build

    with tempfile.TemporaryDirectory() as tmp:
        write_voc_tree(os.path.join(tmp, "raw"), args.num_images)
        source = build("voc_sbd/voc", os.path.join(tmp, "raw"), os.path.join(tmp, "tfds")).as_data_source()["train"]
        print(f"crop {args.crop}x{args.crop}, batch {args.batch}, augment={args.augment}, "
              f"photometric={args.photometric}, read_threads={args.read_threads}, {os.cpu_count()} CPUs")
        for workers in (int(w) for w in args.workers.split(",")):
            data = default.get_config().data
            data.update(name="voc_sbd/voc", seed=0, augment=args.augment, photometric=args.photometric,
                        worker_count=workers, read_threads=args.read_threads)
            loader = pipeline.train_loader(data, args.crop, args.batch, source=source, process_index=0,
                                           process_count=1)
            it = iter(loader)
            for _ in range(args.warmup):
                next(it)
            start = time.perf_counter()
            for _ in range(args.steps):
                batch = next(it)
            seconds = time.perf_counter() - start
            assert batch["image"].shape == (args.batch, args.crop, args.crop, 3)
            rate = args.steps * args.batch / seconds
            per = f"{rate / workers:7.1f} per worker" if workers else "(in the main process)"
            print(f"workers={workers}: {rate:7.1f} images/s {per}")
            del it


if __name__ == "__main__":
    main()
