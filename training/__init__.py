"""`python -m training.train …` and `torchrun -m training.train …` from the repository root: a thin entry point over
`spade-deploy train …` (spade_deploy.cli.train). This folder is not installed; installed users run the console
script (under torchrun: `torchrun --nproc_per_node N -m spade_deploy.cli train …`)."""
