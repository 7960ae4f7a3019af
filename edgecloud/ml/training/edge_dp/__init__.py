"""Edge data-parallel training: one synchronous SGD job across heterogeneous, elastic workers.

- :mod:`.coordinator` — the coordinator (parameter server): shares, steps, checkpoints,
  membership; the module docstring says why it is not torch.distributed;
- :mod:`.job` — the job's settings (JobConfig), events and per-step report (JobReport);
- :mod:`.balance` — EWMA throughput tracking and share planning (equal / aware);
- :mod:`.worker` — the worker process (gradient of its share, emulated device speed);
- :mod:`.wire` — the framed, pydantic-validated messages between them;
- :mod:`.model` — the small ResNet for Fashion-MNIST.

Example::

    from edgecloud.ml.training.edge_dp import Coordinator, JobConfig, spawn_worker
    coord = Coordinator(JobConfig(global_batch=64)).start()
    procs = [spawn_worker(coord.address, n, speed=s)
             for n, s in [("w1", 1), ("w2", 1), ("w3", 1 / 3)]]
    report = coord.run(steps=40)
    coord.close()
"""

from edgecloud.ml.training.edge_dp.balance import ThroughputTracker, plan_shares, split_batch
from edgecloud.ml.training.edge_dp.coordinator import Coordinator, NoWorkers
from edgecloud.ml.training.edge_dp.job import Event, JobConfig, JobReport, StepRecord
from edgecloud.ml.training.edge_dp.model import FashionResNet
from edgecloud.ml.training.edge_dp.worker import run_worker, spawn_worker

__all__ = [
    "Coordinator",
    "Event",
    "FashionResNet",
    "JobConfig",
    "JobReport",
    "NoWorkers",
    "StepRecord",
    "ThroughputTracker",
    "plan_shares",
    "run_worker",
    "spawn_worker",
    "split_batch",
]
