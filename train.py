#!/usr/bin/env python
"""Train (and evaluate) a UNet-FCN on PanNuke with ``transformers.Trainer``.

    python train.py                                   # the built-in demo (configs/demo.yaml)
    accelerate launch train.py configs/fcn-unet-s5-d16_1xb16-0.01-20k_pannuke-512x512.yaml \\
        --data_dir /data/pannuke                      # the reference run; flags override the file
    accelerate launch --multi_gpu --num_processes 4 train.py CONFIG --data_dir ... --sync_bn true
    python train.py --help                            # every argument

The steps (arguments -> data -> model -> transforms -> Trainer -> train -> evaluate -> results ->
push) are in :func:`pannuke_hf.training.run.run`; ``pannuke-hf train`` runs the same code.
"""

import sys

from pannuke_hf.training.run import main

if __name__ == "__main__":
    sys.exit(main())
