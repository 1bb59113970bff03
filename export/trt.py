"""`python -m export.trt CKPT --out DIR …`: the same as `spade-deploy export trt CKPT --out DIR …`."""
import sys

from spade_deploy.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", "trt", *sys.argv[1:]]))
