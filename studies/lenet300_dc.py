"""Study lenet300 × dc: dc on lenet300, fashion-mnist.

Claim: Deep Compression (magnitude pruning to Han et al.'s per-layer fractions, retraining,
k-means sharing, Huffman coding) on LeNet-300-100.

Protocol: a plain net pretrained for 30 epochs, then 60 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/lenet300_dc.py

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (MNIST; Louizos, Ullrich & Welling 2017, Table 2, DC row; no Table 1 row): LeNet-300-100
error 1.6% (uncompressed 1.6%), |w≠0|/|w| 8.0%, pruning 6x, maximum compression 40x.
"""

import sys

from pbc.study import EARLIER_DEFAULTS, Study, main

STUDY = Study(name="lenet300-dc", model="lenet300", prior="dc", data="fashion-mnist",
              epochs=60, pretrain_epochs=30, device="cpu",
              train={**EARLIER_DEFAULTS, "dc_keep": {"fc1": 0.15, "fc2": 0.15}})

if __name__ == "__main__":
    sys.exit(main(STUDY))
