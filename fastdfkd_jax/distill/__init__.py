"""Data-free distillation: state, jitted steps, the step builder, the pool, the epoch.

  state.py    `DistillState` (synthesis state, student `TrainState`, pool), `init_state`;
  sources.py  where KD batches come from (`kind`), decided in one place;
  steps.py    `Distiller`: the per-device synthesis / KD / fused-epoch code and its jits;
  builder.py  `build_programs`: the one place that picks fused / scanned / host-driven
              programs for a config and backend (used by the modes and `bench`);
  pool.py     the synthetic pool (on-device ring buffer, host variant);
  epochs.py   one epoch from the programs, and the run's counters;
  samples.py  the sample grids.
mode=distill itself (setup, evaluation, summary) is `modes.distill`.
"""
