"""The teacher: supervised training, evaluation, and the one loader of trained teachers."""
