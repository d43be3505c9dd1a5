"""The runner: ``python -m bdlib``, what runs the notebooks from outside their kernels.

* :mod:`bdlib.runner.cli`, the command line: runs the notebooks through papermill (``run``),
  lists a notebook's parameters (``params``), builds the nbgrader course (``assignments``), tunes
  the defenses (``tune``) and answers ``status``;
* :mod:`bdlib.runner.notebooks`, the notebooks as files: which there are, and their parameters;
* :mod:`bdlib.runner.openmp`, the OpenMP settings each notebook's kernel starts with;
* :mod:`bdlib.runner.publish`, the executed copies made deterministic and portable (``executed/``);
* :mod:`bdlib.runner.classroom`, the nbgrader course and the students' copies;
* :mod:`bdlib.runner.provenance`, which code made the figures, and whether they are stale (``status``).

Nothing in the library below it imports it, except on the kernel side where a notebook records
provenance: :mod:`bdlib.figures` imports :mod:`bdlib.runner.provenance` (to record, beside the
figures, the code they came from) and :mod:`bdlib.runner.notebooks` (to find a figure's notebook and
its default parameters); whatever imports :mod:`bdlib.figures` (``bdlib.session``, the report and
study modules, the notebooks) reaches those two through it. No library module imports
:mod:`bdlib.runner.cli`: only ``bdlib.__main__`` does.
"""
