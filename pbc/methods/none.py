"""A plain network trained by maximum likelihood (``--prior none``, ``pbc pretrain``): the
baseline every compression is measured against, and the pretrained start of the others."""

from __future__ import annotations

from pbc.io import StageError
from pbc.methods.base import Method


class Plain(Method):
    name = "none"

    def evaluation_network(self, net, arch):
        """The trained network is plain already."""
        return net

    def compression_plan(self, run, config, arch, net):
        raise StageError(f"{run.path}: a deterministic run (prior 'none') has nothing to "
                         f"compress; train with --prior gnj|ghs|svd|sws|dc")
