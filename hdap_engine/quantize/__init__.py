"""INT8 after pruning: the model that ships, quantised, timed and evaluated in ONNX Runtime.

- `ptq`       post-training static quantisation with ONNX Runtime's quantiser (QDQ,
              per-channel weights, symmetric activations), the ops it cannot quantise
              refused by name;
- `images`    calibration images: the study's ``--data`` (preprocessed as for evaluation)
              or, only when asked, random inputs;
- `session`   ONNX Runtime sessions, and an ONNX model as a classifier that
              `hdap_engine.accuracy.evaluate` scores like any other;
- `cache`     candidates quantised for timing, kept in the workspace by architecture,
              so nothing is quantised twice;
- `bundle`    ``model.int8.onnx`` added to a bundle, with its held-out top-1 and the
              report's ``quantization`` block.
"""
