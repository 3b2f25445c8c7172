"""Training: optimizer, train state and step, checkpoints, metric logging and the loop (`train_and_evaluate`)."""
