"""The DIP machinery every DIP method shares: the optimisation engine and its callbacks, and run
folders (config, metrics, checkpoints) that make a run resumable bit for bit."""
