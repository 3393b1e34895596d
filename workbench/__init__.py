"""Meta-Learning Workbench: few-shot image classification and meta-learning."""

__version__ = "0.1.0"
