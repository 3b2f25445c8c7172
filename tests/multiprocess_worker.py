"""One process of the two-process loopback tests:
`python multiprocess_worker.py PORT PROCESS_ID DATA_DIR WORKDIR [STEPS [crf]]`. Starts jax.distributed on
127.0.0.1 with gloo CPU collectives, one CPU device per process, and trains the tiny config through the real loop
for STEPS (default 3) steps, saving every 2; with `crf`, the final evaluation uses the dense CRF."""

import os
import sys

import jax

port, process_id, data_dir, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 3
crf = len(sys.argv) > 6 and sys.argv[6] == "crf"
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", 1)
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                           initialization_timeout=120)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcn_jax.training.loop import train_and_evaluate  # noqa: E402
from tests.tiny_run import tiny_config  # noqa: E402

config = tiny_config(data_dir, num_train_steps=steps, global_batch_size=2, eval_batch_size=2,
                     checkpoint_every_steps=2, **{"eval.crf": crf})
summary = train_and_evaluate(config, workdir)
print(f"process {process_id} of {jax.process_count()} done: miou {summary['miou']:.6f}", flush=True)
