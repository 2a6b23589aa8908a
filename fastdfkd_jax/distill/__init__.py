"""Data-free distillation: state, jitted steps, the step builder, the pool, the run loop.

  state.py    `DistillState` (synthesis state, student `TrainState`, pool), `init_state`;
  steps.py    `Distiller`: the per-device synthesis / KD / fused-epoch code and its jits;
  builder.py  `build_programs`: the one place that picks fused / scanned / host-driven
              programs for a config and backend (used by the run loop and `bench`);
  pool.py     the synthetic pool (on-device ring buffer, host variant);
  loop.py     `run_distill`, mode=distill end to end.
"""
