"""What the notebooks show: pure functions over rows and records, computing nothing.

Every function here takes rows (dicts of metrics, as :mod:`bdlib.cells`, the study and
:mod:`bdlib.study.measure` return them) or stored runs and their records (``run.record``,
``run.before``, ``run.metrics``), and returns tables, summaries, figure rows or notes. Nothing
here trains, runs a model, reads or writes the store, or runs a cell or a sweep: that is
:mod:`bdlib.study` (the grid, the protocol, the measurements) over :mod:`bdlib.cells` and
:mod:`bdlib.experiment`, none of which this package imports (tests/test_report_pure.py calls every
function here with training, inference and the store made to raise). What the study decides by
its rules (a bar, the reference recipes, the baselines' names) comes in as an argument, so
editing a table never touches a result.

* :mod:`bdlib.report.common` — what several notebooks use: the parameters checked, the profile
  described, summaries and tables of rows;
* one module per notebook: :mod:`~bdlib.report.poisoning` (01), :mod:`~bdlib.report.nt_stage`
  (02), :mod:`~bdlib.report.mutual_learning` (03), :mod:`~bdlib.report.none` (04),
  :mod:`~bdlib.report.mcldef` (05), :mod:`~bdlib.report.comparisons` (06).

A notebook imports ``common`` and its own module by their names, and the study modules it
computes with, in its set-up cell::

    from bdlib.report import common, poisoning
    from bdlib.study import measure

Rows for :func:`bdlib.plots.curves` are long: one row per x value and line, the line's legend
label in ``"series"``.
"""
