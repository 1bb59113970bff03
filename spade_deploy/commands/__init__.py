"""Subcommands of the `spade-deploy` command line, one module each (see `spade_deploy.cli`)."""
