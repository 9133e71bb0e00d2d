"""Study resnet8 × ghs: ghs on a residual network of the user's kind, fashion-mnist.

Claim: BC-GHS prunes the channels of a network with skip connections, built by a factory as a
user would write it (``--model pbc.zoo:resnet8``): channels tied through the additions leave
together, and the pruned network is a smaller plain torch network of the same graph.

Protocol: 10 epochs under the method from scratch, batch 100, the method's defaults.
Command::

    python studies/resnet8_ghs.py

Add ``--smoke`` to check the pipeline in seconds.

Paper (CIFAR-10; Ullrich, Meeds & Welling 2017, soft weight-sharing table): a light
ResNet at 6.48% error compressed 45x with 8.50% error.  No Bayesian-compression row exists
for a residual network in Louizos, Ullrich & Welling (2017).
"""

import sys

from pbc.study import EARLIER_BC, Study, main

STUDY = Study(name="resnet8-ghs", model="pbc.zoo:resnet8", prior="ghs", data="fashion-mnist",
              epochs=10, pretrain_epochs=0, device="cpu", train=EARLIER_BC)

if __name__ == "__main__":
    sys.exit(main(STUDY))
