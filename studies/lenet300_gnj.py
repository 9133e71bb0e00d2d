"""Study lenet300 × gnj: gnj on lenet300, fashion-mnist.

Claim: BC-GNJ prunes LeNet-300-100's input pixels and hidden units and sets per-layer bit
precisions from the posterior variances, within about a point of the plain net's error.

Protocol: a plain net pretrained for 30 epochs, then 30 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/lenet300_gnj.py

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (MNIST; Louizos, Ullrich & Welling 2017, Tables 1 and 2, BC-GNJ rows): LeNet-300-100
pruned to 278-98-13 (original 784-300-100) with bit precisions 8-9-14; error 1.8% (uncompressed
1.6%), |w≠0|/|w| 10.8%, pruning 9x, fast prediction 36x, maximum compression 58x.
"""

import sys

from pbc.study import EARLIER_BC, Study, main

STUDY = Study(name="lenet300-gnj", model="lenet300", prior="gnj", data="fashion-mnist",
              epochs=30, pretrain_epochs=30, device="cpu", train=EARLIER_BC)

if __name__ == "__main__":
    sys.exit(main(STUDY))
