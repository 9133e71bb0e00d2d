"""pbc — Bayesian compression of neural networks (Louizos, Ullrich & Welling 2017) on Pyro."""

__version__ = "0.1.0"
