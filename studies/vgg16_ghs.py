"""Study vgg16 × ghs: ghs on vgg16, cifar10.

Claim: BC-GHS on VGG-16 (CIFAR-10). Needs CIFAR-10 (--data-dir) and a GPU.

Protocol: a plain net pretrained for 100 epochs, then 200 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/vgg16_ghs.py --data-dir DIR

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (CIFAR-10; Louizos, Ullrich & Welling 2017, Tables 1 and 2, BC-GHS rows): VGG pruned to
51-62-125-128-228-129-38-13-9-6-5-6-6-6-20 (original (2x64)-(2x128)-(3x256)-(8x512), 13 conv +
2 fc) with bit precisions 11-12-9-14-10-8-5-5-6-6-6-8-11-17-10; error 9.0% after pruning and at
fast prediction, 9.2% at maximum compression (uncompressed 8.4%), |w≠0|/|w| 5.5%, pruning 18x,
fast prediction 59x, maximum compression 116x.
"""

import sys

from pbc.study import Study, main

STUDY = Study(name="vgg16-ghs", model="vgg16", prior="ghs", data="cifar10",
              epochs=200, pretrain_epochs=100, device="cuda", train={})

if __name__ == "__main__":
    sys.exit(main(STUDY))
