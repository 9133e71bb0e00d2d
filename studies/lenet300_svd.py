"""Study lenet300 × svd: svd on lenet300, fashion-mnist.

Claim: Sparse variational dropout prunes single weights (log α ≥ 3); its unstructured
sparsity compresses well but gives little dense speed-up.

Protocol: a plain net pretrained for 30 epochs, then 30 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/lenet300_svd.py

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (MNIST; Louizos, Ullrich & Welling 2017, Tables 1 and 2, Sparse VD rows): LeNet-300-100
pruned to 512-114-72 (original 784-300-100) with bit precisions 8-11-14; error 1.8%
(uncompressed 1.6%), |w≠0|/|w| 2.2%, pruning 21x, fast prediction 84x, maximum compression
113x.
"""

import sys

from pbc.study import EARLIER_DEFAULTS, Study, main

STUDY = Study(name="lenet300-svd", model="lenet300", prior="svd", data="fashion-mnist",
              epochs=30, pretrain_epochs=30, device="cpu", train=EARLIER_DEFAULTS)

if __name__ == "__main__":
    sys.exit(main(STUDY))
