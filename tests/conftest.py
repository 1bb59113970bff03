"""Suite-wide fixtures (tests/fixtures/): tiny model variants, the training datasets, the serving fixtures (tiny
exported models, one Triton server per session) and a tiny benchmark result."""
pytest_plugins = ["tests.fixtures.models", "tests.fixtures.training", "tests.fixtures.serving", "tests.fixtures.bench"]
