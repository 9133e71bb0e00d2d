"""Study lenet300 × sws: sws on lenet300, fashion-mnist.

Claim: Soft weight-sharing clusters LeNet-300-100's weights into at most 17 shared values,
most of them exactly zero.

Protocol: a plain net pretrained for 30 epochs, then 20 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer), with
``--sws-tau 0.2 --sws-zero-rate 0.01 --sws-rate 0.001``. The tutorial's hyperprior rates keep
the zero spike and the components too wide for Fashion-MNIST's dense inputs, and quantising
then costs points (see pbc/soft_sharing.py).

Command::

    python studies/lenet300_sws.py

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (MNIST; Louizos, Ullrich & Welling 2017, Table 2, SWS row; no Table 1 row): LeNet-300-100
error 1.9% (uncompressed 1.6%), |w≠0|/|w| 4.3%, pruning 12x, maximum compression 64x. The paper
marks this row with its asterisk (best case guesses).
"""

import sys

from pbc.study import EARLIER_DEFAULTS, Study, main

STUDY = Study(name="lenet300-sws", model="lenet300", prior="sws", data="fashion-mnist",
              epochs=20, pretrain_epochs=30, device="cpu",
              train={**EARLIER_DEFAULTS, "lr": 0.0005,
                     "sws_tau": 0.2, "sws_zero_rate": 0.01, "sws_rate": 0.001})

if __name__ == "__main__":
    sys.exit(main(STUDY))
