"""An example plugin for the Meta-Learning Workbench: the cosine-centroids algorithm and the shapes dataset.

Nothing here registers itself on import: the workbench reads the entry points of ``pyproject.toml`` and hands
each object to its registry, which checks it and records an error instead if it is refused.
"""
