"""The d2l.ai LeNet, its Fashion-MNIST data and its training loop.

Knows nothing of grids or reports.
"""
