"""Torch-free pieces of ddpm-mnist: noise schedule, sampler, MNIST reader, image output.

Imports only NumPy, ONNX Runtime, imageio, click and the standard library.
"""
