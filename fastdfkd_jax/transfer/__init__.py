"""Transfer sets: their file formats (`formats`) and the export of a run's pool with the
teacher's view of it (`export`). mode=synthesize makes one (`modes.synthesize`)."""
