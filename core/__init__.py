"""The shared, torch-free core of ddpm-mnist: what every layer uses and nothing else needs.

The NumPy noise schedule and samplers (one definition of the diffusion for the trainer, the
exporter and the runtime), the model metadata contract, the MNIST IDX reader, image grids and
output files, atomic writes, progress lines, one-line errors and the command-line frame around
them. It imports NumPy, imageio, click and the standard library; never torch, onnx or ONNX
Runtime, and nothing from the layers above it (train, export, runtime, benchmarks).
"""
