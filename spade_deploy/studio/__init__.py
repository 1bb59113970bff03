"""The painting studio: a GauGAN-style web page over any model this project runs (`spade-deploy paint`).

`backends` runs the model (PyTorch or ONNX Runtime in this process, or a Triton server through the client),
`catalog` says what the page shows of it (class names and colours, example maps), `bodies` turns HTTP bodies into
checked arrays and back, `app` is the FastAPI application, and `static/` the page itself (plain HTML/JS/CSS, no build
step). A stage above serve/client: nothing below imports it.
"""
