"""Batch reconstruction of many specimens (``ctdip batch``): local worker processes or Slurm (submitit).

Each scan folder gets one run folder, ``<output>/<scan name>/``, made by the same driver as
``ctdip reconstruct`` (:func:`ctdip.workflows.reconstruct.reconstruct`). Before anything runs, every
specimen is classified:

* ``done``: its run folder is finished (``RunFolder.is_finished``: summary.json + recon.tif);
  skipped, so re-running the same command after a crash only does what is left;
* ``resume``: the run folder was started (config.yaml, usually a checkpoint) but not finished:
  the driver continues it (``resume=True``), to the same result as an uninterrupted run with the
  same seed (classical methods simply run again);
* ``new``: everything else.

A ``done`` or ``resume`` run is only reused when the settings recorded in its ``config.yaml``
(method, resolved parameters, scan options, seed, holdout, early stopping:
:func:`requested_settings`) equal the requested ones; otherwise the batch is refused before any
work with one line naming the specimens and the differences, or, with ``rerun``, those run
folders are removed and done again from scratch.

Executors:

* ``local``: ``--jobs J`` spawned worker processes fed one specimen at a time by the parent
  (:mod:`.local`: signals, no orphans), each with its own torch thread pool of
  ``max(1, cores // J)`` threads: CPU-bound reconstructions then share the machine without
  oversubscription. Default ``J = min(specimens, max(1, cores // 4))``.
* ``slurm``: one Slurm array job through submitit's ``AutoExecutor`` (partition, time, GPUs,
  memory, CPUs per task, array parallelism). The jobs run the same worker function on the nodes.
  With ``--no-wait`` ``ctdip batch`` returns after submission; otherwise it follows the jobs.
  When ``--time`` is given, each run is asked to checkpoint and stop a few minutes before the
  Slurm limit, so the next ``ctdip batch`` resumes it instead of starting over. ``scancel``
  sends SIGTERM: a DIP run checkpoints at the end of its iteration (:func:`run_specimen`).

Progress is read from the run folders themselves (the last row of each ``metrics.csv``), the
same way for both executors. A failing specimen (unreadable data, a crash) is reported with its
one-line reason and never stops the others; the command exits with code 1 listing failures.

Modules: :mod:`.plan` (specimens, settings check), :mod:`.worker` (one specimen), :mod:`.local`
(the spawned worker pool) with :mod:`.signals`, :mod:`.slurm` (submitit: ``sbatch`` parameters,
following the jobs), :mod:`.table` (live progress), :mod:`.report` (the result, the status and
summary files, one line per outcome), :mod:`.run` (:func:`run_batch`).
"""

from ctdip.workflows.batch.local import cpu_count, default_jobs, run_pool
from ctdip.workflows.batch.plan import (
    STATES,
    Specimen,
    check_settings,
    plan,
    recorded_settings,
    requested_settings,
    settings_diff,
)
from ctdip.workflows.batch.report import BatchResult, failure_lines, specimen_line, summary_rows, write_batch_files
from ctdip.workflows.batch.run import run_batch
from ctdip.workflows.batch.signals import SignalLatch, StopControl, signal_name
from ctdip.workflows.batch.slurm import SlurmOptions, make_executor, parse_mem_gb, parse_time_minutes, slurm_parameters
from ctdip.workflows.batch.table import Progress
from ctdip.workflows.batch.worker import checkpoint_iteration, run_specimen

__all__ = [
    "STATES", "BatchResult", "Progress", "SignalLatch", "SlurmOptions", "Specimen", "StopControl", "check_settings",
    "checkpoint_iteration", "cpu_count", "default_jobs", "failure_lines", "make_executor", "parse_mem_gb",
    "parse_time_minutes", "plan", "recorded_settings", "requested_settings", "run_batch", "run_pool", "run_specimen",
    "settings_diff", "signal_name", "slurm_parameters", "specimen_line", "summary_rows", "write_batch_files",
]
