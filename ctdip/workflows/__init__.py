"""Workflows a user runs: one reconstruction into a run folder, many specimens (batch), the
evaluation of runs, network spectra, and their figures. The CLI is a thin layer over these."""
