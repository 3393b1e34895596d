"""The headless engine: data, models, algorithms, training, evaluation and the run store.

Nothing under ``workbench.core`` may import Qt; a contract in pyproject.toml and a test enforce it.
"""
