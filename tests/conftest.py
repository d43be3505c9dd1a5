"""The suite's order: the two end-to-end runs first.

The smoke run of every notebook (test_notebooks.py) and the paper-path run (test_paper_path.py)
take most of the suite's time. Collected first, pytest-xdist (``make test``: two workers, a file
per worker at a time) starts each on its own worker at once and the short files fill in beside
them, instead of one of them starting last and running alone at the end.
"""

LONG_FIRST = ("test_notebooks.py", "test_paper_path.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONG_FIRST)
