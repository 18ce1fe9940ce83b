"""PyTorch side of ddpm-mnist: the U-Net, the forward diffusion, MNIST data and the trainer."""
