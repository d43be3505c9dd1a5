"""The suite's order: the longest test files first.

``make test`` runs two pytest-xdist workers, a whole file per worker at a time, in this order
(``--no-loadscope-reorder``: xdist would otherwise order files by how many tests they hold).
Longest first, each worker starts on one of the two end-to-end runs (every notebook on smoke,
the paper path) and the shorter files fill in beside them, so both workers finish near the same
time instead of one running a long file alone at the end. The order is by seconds measured on a
2-core machine (2026-12-07); a file not listed runs after these, in collection order.

The suite computes in its own processes: ``$BDLIB_WORKERS`` is 1 unless a test sets it
(tests/test_pool.py starts worker processes on purpose), so two xdist workers never start two
pools of their own beside each other on two cores.
"""

import os

os.environ.setdefault("BDLIB_WORKERS", "1")

LONGEST_FIRST = (
    "test_notebooks.py",  # ~90 s: every notebook on smoke
    "test_paper_path.py",  # ~65 s: 01, 04, 06 on ResNet-18
    "test_provenance.py",  # ~45 s: a parameterised quick run through the runner and papermill
    "test_book.py",  # ~20 s: the site built and opened in Chromium
    "test_nbgrader.py",  # ~18 s
    "test_entry_points.py",  # ~17 s
    "test_failing_well.py",  # ~14 s
    "test_grid.py",  # ~13 s: a Dask LocalCluster
    "test_store.py",  # ~6 s
    "test_pool.py",  # ~10 s: spawned worker processes
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
