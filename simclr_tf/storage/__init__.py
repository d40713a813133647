"""What a run keeps in --model_dir: checkpoints, the run lock, JSON records and summaries."""
