"""Training: the task and its step, the loop, hooks, objective and optimizers."""
