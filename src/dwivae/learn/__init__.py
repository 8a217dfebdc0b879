"""The networks and how they are trained: configs, the VAE and DAE, losses, the simulated data
sets, the training loop (autograd, or the compiled step where it handles the network), model
directories (safetensors + JSON, never pickle) and models read without torch.
"""
