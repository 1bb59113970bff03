"""Measuring a generator: the SPADE paper's way (a segmentation network run on generated images, scored against the
label maps they were made from, beside the same network on the real images), and FID and KID against the real images.

- `metrics`: confusion matrices, per-class IoU, mIoU, pixel accuracy and per-class colour statistics (numpy only);
- `segmenter`: the small segmentation network for the landscape classes, its training and its ONNX export;
- `inception`: the Inception-v3 of FID, reading pytorch-fid's weight file;
- `fid`: FID and KID of two sets of Inception features (numpy only);
- `evaluate`: generator (checkpoint, ONNX export or module) + ONNX segmenter (+ Inception) over a folder dataset
  -> a JSON-ready report.
"""
