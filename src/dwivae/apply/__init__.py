"""A model applied to a scan: masks, the voxel-wise and grouped denoisers, the noise floor's
removal, the model matched to a scan's protocol and noise, and the outputs written atomically.
"""
