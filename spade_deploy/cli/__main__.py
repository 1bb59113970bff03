"""`python -m spade_deploy.cli …` (and `torchrun -m spade_deploy.cli train …`): the `spade-deploy` console script."""
import sys

from spade_deploy.cli import main

sys.exit(main())
