"""Training on several processes through torch.distributed: one module per concern.

- :mod:`~lm.distributed.env`: who am I (rank, world size, device), process
  group set-up and tear-down, the NCCL environment for GPUs without P2P.
- :mod:`~lm.distributed.launch`: ``lab run --gpus N`` through torch's own
  launcher (torch.distributed.run: elastic agent + rendezvous), and what to
  report when a rank dies.
- :mod:`~lm.distributed.plan`: which parallel mode a run uses (``training.parallel``).
- :mod:`~lm.distributed.ddp` and :mod:`~lm.distributed.fsdp`: wrapping the
  model, gradient sync only on the last micro-step, clipping by the global norm.
- :mod:`~lm.distributed.data`: each rank's slice of the globally drawn batch.
- :mod:`~lm.distributed.dcp`: sharded checkpoints (torch.distributed.checkpoint)
  and their conversion to one consolidated checkpoint.
- :mod:`~lm.distributed.faults`: agreeing on stop/time-up across ranks.

Nothing here is imported by a single-process run except :mod:`env` (to learn
that the world has one process).
"""
