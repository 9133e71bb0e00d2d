"""Study lenet300 × ghs: ghs on lenet300, fashion-mnist.

Claim: BC-GHS (group horseshoe, τ0 = 1e-5) prunes LeNet-300-100 groups and sets bit
precisions, within about a point of the plain net's error.

Protocol: a plain net pretrained for 30 epochs, then 30 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/lenet300_ghs.py

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (MNIST; Louizos, Ullrich & Welling 2017, Tables 1 and 2, BC-GHS rows): LeNet-300-100
pruned to 311-86-14 (original 784-300-100) with bit precisions 13-11-10; error 1.8% after
pruning, 1.9% at fast prediction, 2.0% at maximum compression (uncompressed 1.6%), |w≠0|/|w|
10.6%, pruning 9x, fast prediction 23x, maximum compression 59x.
"""

import sys

from pbc.study import EARLIER_DEFAULTS, Study, main

STUDY = Study(name="lenet300-ghs", model="lenet300", prior="ghs", data="fashion-mnist",
              epochs=30, pretrain_epochs=30, device="cpu", train=EARLIER_DEFAULTS)

if __name__ == "__main__":
    sys.exit(main(STUDY))
