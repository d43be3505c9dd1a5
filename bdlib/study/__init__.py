"""The study: what the notebooks run on top of the methods, and how it is judged.

* :mod:`bdlib.study.grid` — the comparison grid's cells (attack × defense × seed × clean budget)
  and the Dask cluster that may run them;
* :mod:`bdlib.study.tune` — the comparison protocol: every defense set by one declared rule on
  tuning seeds that are never reported;
* :mod:`bdlib.study.readings` — NT-ML's readings sweep, chosen by the same rule first;
* :mod:`bdlib.study.claims` — the claims ledger, built from the registries and the grid's rows;
* :mod:`bdlib.study.measure` — the notebooks' measurements beyond a cell's row (inference on
  stored models, embeddings), each computed through :mod:`bdlib.cells` or the store.

Every computation goes through :mod:`bdlib.cells` (one cell, one ``run_cell``, one row format)
or :mod:`bdlib.experiment`'s cached stages; the report package below the notebooks only reads
the rows these return. Nothing below this package imports it.
"""
