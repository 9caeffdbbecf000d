"""Run-keeping: where a run goes, which checkpoint resumes it, and the records it leaves.

| module | owns |
|---|---|
| :mod:`~inception_lab.run.files` | torch-free: names, variants, atomic writes, the typed :class:`RunSummary` and its
  reader (a dead fit reads as ``killed``), metrics.csv's reader |
| :mod:`~inception_lab.run.resume` | which run a command writes, which checkpoint resumes it, whether a resume is the
  same run, and :class:`ExactResume` |
| :mod:`~inception_lab.run.record` | the writers: summary.json (the fit's), ``<stage>-summary.json`` (an
  evaluation's), metrics files, checkpoints written atomically, predictions.csv |
| :mod:`~inception_lab.run.predictions` | ``predictions/<split>-<views>.npz`` for ``ensemble`` |

This package's ``__init__`` imports nothing: ``files`` must stay importable without torch.
"""
