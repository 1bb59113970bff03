"""`python -m export.onnx …` and `python -m export.trt …` from the repository root: thin entry points over
`spade-deploy export onnx|trt …` (spade_deploy.cli.export). This folder is not installed; installed users run the
console script."""
