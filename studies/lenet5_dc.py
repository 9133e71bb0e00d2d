"""Study lenet5 × dc: dc on lenet5, fashion-mnist.

Claim: Deep Compression on LeNet-5-Caffe with Han et al.'s per-layer keep fractions.

Protocol: a plain net pretrained for 30 epochs, then 20 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/lenet5_dc.py

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (MNIST): LeNet-5-Caffe DC error 0.7%, pruning 6x (pbc/paper.py).
"""

import sys

from pbc.study import Study, main

STUDY = Study(name="lenet5-dc", model="lenet5", prior="dc", data="fashion-mnist",
              epochs=20, pretrain_epochs=30, device="cpu", train={})

if __name__ == "__main__":
    sys.exit(main(STUDY))
