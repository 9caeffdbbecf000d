"""Run-keeping: what a run is, where it goes, which checkpoint resumes or evaluates it, and the records it leaves.
Each decision has one owner here; the rest of the package asks (and this package imports nothing of ``sweep``).

| module | owns |
|---|---|
| :mod:`~inception_lab.run.layout` | torch-free: :class:`RunDir`, where a run directory's file names are spelled |
| :mod:`~inception_lab.run.files` | torch-free: names, atomic writes, :class:`RunSummary` and its reader (a dead stage
  reads ``killed``), metrics.csv's reader |
| :mod:`~inception_lab.run.identity` | torch-free: a run's identity (its config less bookkeeping), what a resume may
  change, variants |
| :mod:`~inception_lab.run.config` | where a command's config comes from, and ``config.yaml``'s writer |
| :mod:`~inception_lab.run.resume` | which run a command writes, whether it is a resume, which checkpoint resumes or
  evaluates it, the run's lock (``hold_run``), :class:`ExactResume` |
| :mod:`~inception_lab.run.record` | the writers: summary.json, ``<stage>-summary.json``, metrics, checkpoints |
| :mod:`~inception_lab.run.predictions` | ``predictions/<split>-<views>.npz`` for ``ensemble`` |
| :mod:`~inception_lab.run.requeue` | SLURM's warning in a fit: save at a step's end, requeue |

This package's ``__init__`` imports nothing: ``layout``, ``files`` and ``identity`` stay importable without torch.
"""
