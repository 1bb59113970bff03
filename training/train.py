"""`python -m training.train …` / `torchrun -m training.train …`: the same as `spade-deploy train …`."""
import sys

from spade_deploy.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
