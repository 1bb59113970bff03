"""Measuring a generator the SPADE paper's way: a segmentation network run on generated images, scored against the
label maps they were made from, beside the same network on the real images.

- `metrics`: confusion matrices, per-class IoU, mIoU, pixel accuracy and per-class colour statistics (numpy only);
- `segmenter`: the small segmentation network for the landscape classes, its training and its ONNX export;
- `evaluate`: generator + ONNX segmenter over a folder dataset -> a JSON-ready report.
"""
