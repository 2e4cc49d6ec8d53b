"""Launch and sweep tools: sweep.py (local, TPU VM pods, SLURM), summarize.py (Table 1 layout)."""
