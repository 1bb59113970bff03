"""Suite-wide fixtures: the serving fixtures (tiny exported models, one Triton server per session)."""
pytest_plugins = ["tests.triton_fixtures"]
