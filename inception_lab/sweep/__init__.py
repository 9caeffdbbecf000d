"""``python -m inception_lab sweep sweeps/<x>.yaml``: run a W&B sweep file locally, with no W&B server (the command:
``main.py``; importing one part of the package, as the CLI's claim check does, imports no other). Each trial runs the
command line the W&B agent would run for it, rendered by wandb's own code (``commands.py``), as a subprocess
(``runner.py``), on the trials W&B's ``sweeps`` engine picks (``spec.py``), the sweep's state kept in ``state.json``
(``state.py``); every trial's config is parsed by the CLI before anything runs. Run it again after a crash or a kill
and it carries on: finished trials are kept, an interrupted one resumes from its last checkpoint or restarts. The
sweep directory (``runs/sweeps/<sweep file stem>/``, or ``--out``), which ``compare`` reads, holds ``sweep.yaml``
(the sweep file as run), ``state.json`` with its previous good copy ``state.json.prev`` (``state.py``: any number of
runners share it) and each trial's run directory, ``runs/<trial>/`` (a ``RunDir``).
"""
