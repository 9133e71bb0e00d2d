"""Study lenet5 × svd: svd on lenet5, fashion-mnist.

Claim: Sparse variational dropout on LeNet-5-Caffe: high unstructured sparsity, little
structured pruning.

Protocol: a plain net pretrained for 30 epochs, then 15 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/lenet5_svd.py

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (MNIST): LeNet-5-Caffe Sparse VD error 1.0%, pruning 63x, fast prediction 228x
(pbc/paper.py).
"""

import sys

from pbc.study import Study, main

STUDY = Study(name="lenet5-svd", model="lenet5", prior="svd", data="fashion-mnist",
              epochs=15, pretrain_epochs=30, device="cpu", train={})

if __name__ == "__main__":
    sys.exit(main(STUDY))
