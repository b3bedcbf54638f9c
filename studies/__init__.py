"""Experiments that take longer than a notebook cell: run them with `python -m studies.NAME`."""
