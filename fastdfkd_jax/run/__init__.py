"""Run infrastructure, below every other wing of the package.

  parallel.py    the device mesh and `shard_map` helpers (data parallelism);
  loops.py       where the loop structure is chosen (scan on TPU/GPU, host-driven on CPU);
  xla_env.py     XLA flags and the activation dtype of a config, resolved per machine;
  checkpoint.py  atomic orbax checkpoints, the newest one that reads;
  reporting.py   metrics.jsonl, TensorBoard, progress lines, image grids;
  workdir.py     the workdir's lock, checks, config record and finished summary;
  signals.py     preemption (SIGTERM/SIGINT);
  skeleton.py    the one run skeleton every mode plugs into (`Task`).
"""
