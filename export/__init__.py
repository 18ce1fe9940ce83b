"""Export layer: turns training checkpoints into TorchScript and self-describing ONNX files."""
