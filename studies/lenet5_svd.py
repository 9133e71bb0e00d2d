"""Study lenet5 × svd: svd on lenet5, fashion-mnist.

Claim: Sparse variational dropout on LeNet-5-Caffe: high unstructured sparsity, little
structured pruning.

Protocol: a plain net pretrained for 30 epochs, then 15 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/lenet5_svd.py

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (MNIST; Louizos, Ullrich & Welling 2017, Tables 1 and 2, Sparse VD rows): LeNet-5-Caffe
pruned to 14-19-242-131 (original 20-50-800-500) with bit precisions 13-10-8-12; error 1.0%
(uncompressed 0.9%), |w≠0|/|w| 0.7%, pruning 63x, fast prediction 228x, maximum compression
365x.
"""

import sys

from pbc.study import EARLIER_DEFAULTS, Study, main

STUDY = Study(name="lenet5-svd", model="lenet5", prior="svd", data="fashion-mnist",
              epochs=15, pretrain_epochs=30, device="cpu", train=EARLIER_DEFAULTS)

if __name__ == "__main__":
    sys.exit(main(STUDY))
