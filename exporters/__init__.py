"""shopscore exporters: Keras to ONNX conversion, parity checks and model manifests."""
