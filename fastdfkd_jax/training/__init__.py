"""What every trained network shares: its state (`train_state`), optimizers and learning
rate schedules (`optim`), and the supervised and KD objectives (`objectives`)."""
