#!/bin/sh
# The calibration points of spade_deploy.model.memory, as run for measurements.jsonl (about 15 minutes on 2 cores).
set -e
here=$(dirname "$0")
M="python $here/measure.py"
work=$(mktemp -d)
B='bundled'
WIDE_HIDDEN='{"label_nc":10,"ngf":16,"spade_hidden":256}'
WIDE_NGF='{"label_nc":10,"ngf":64,"spade_hidden":64}'
MANY_LABELS='{"label_nc":150,"contain_dontcare_label":true,"ngf":16,"spade_hidden":64}'
ADE20K='{"label_nc":150,"contain_dontcare_label":true,"ngf":64,"spade_hidden":128}'
MOST='{"label_nc":10,"ngf":16,"spade_hidden":64,"num_upsampling_layers":"most","crop_size":256}'
MID='{"label_nc":35,"ngf":32,"spade_hidden":128}'
for size in 256 512 1024 2048; do $M pytorch $B $size $size 1; done
$M pytorch $B 512 512 4
$M pytorch $B 2048 2048 1 --threads 1
for config in "$WIDE_HIDDEN" "$WIDE_NGF" "$MANY_LABELS" "$MOST"; do
  for size in 512 1024; do $M pytorch "$config" $size $size 1; done
done
for size in 256 512 768 1024; do $M pytorch "$ADE20K" $size $size 1; done
$M pytorch "$ADE20K" 256 256 4
for size in 256 512; do $M pytorch "$MID" $size $size 1; done
$M pytorch $B 1024 1024 1 --no-mkldnn
$M pytorch "$MID" 512 512 1 --no-mkldnn
for size in 256 512; do
  for graph in sparse dense; do $M export $B $size $graph "$work/b_${graph}_$size.onnx"; done
  $M onnxruntime "$work/b_sparse_$size.onnx" 1 --labels all-boundary
  $M onnxruntime "$work/b_sparse_$size.onnx" 1
  $M onnxruntime "$work/b_dense_$size.onnx" 1 --no-warmup
done
$M onnxruntime "$work/b_sparse_256.onnx" 4 --labels all-boundary
$M onnxruntime "$work/b_sparse_256.onnx" 4
for graph in sparse dense; do $M export "$MID" 256 $graph "$work/m_${graph}_256.onnx"; done
$M onnxruntime "$work/m_sparse_256.onnx" 1 --labels all-boundary
$M onnxruntime "$work/m_sparse_256.onnx" 2 --labels all-boundary
$M onnxruntime "$work/m_dense_256.onnx" 1 --no-warmup
$M export-encoder "$work/encoder.onnx"
$M encoder "$work/encoder.onnx" 1024 1024 1
$M encoder "$work/encoder.onnx" 2048 2048 1
$M encoder "$work/encoder.onnx" 1024 1024 4
$M encoder "$work/encoder.onnx" 4096 2048 1
rm -r "$work"
