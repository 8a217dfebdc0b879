"""The compiled kernels: C sources (forward pass, training steps, noisy copies, 3D median) and
their ctypes bindings (:mod:`dwivae.kernels.bindings`), nothing else. The lowest layer: it imports
no other part of dwivae. Callers fall back to torch or numpy where no C compiler is found.
"""
