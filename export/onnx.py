"""`python -m export.onnx CKPT --out DIR …`: the same as `spade-deploy export onnx CKPT --out DIR …`."""
import sys

from spade_deploy.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", "onnx", *sys.argv[1:]]))
