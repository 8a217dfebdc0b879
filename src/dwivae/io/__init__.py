"""Files: 4D NIfTI diffusion series read lazily slab by slab (:mod:`~dwivae.io.nifti`), outputs
written atomically (:mod:`~dwivae.io.writing`), and the names of companion files (sidecars,
gradient files). Below the physics: it knows nothing of protocols or models.
"""
from dwivae.io.nifti import (
                             AFFINE_TOLERANCE,
                             derived_header,
                             find_gradient_files,
                             iter_slabs,
                             load_dwi,
                             load_mask,
                             output_paths,
                             sidecar_path,
                             split_nifti,
)
from dwivae.io.writing import (
                             NiftiWriter,
                             check_output,
                             json_text,
                             write_json_atomic,
                             write_nifti_atomic,
                             write_text_atomic,
)

__all__ = ["AFFINE_TOLERANCE", "NiftiWriter", "check_output", "derived_header", "find_gradient_files", "iter_slabs",
           "json_text", "load_dwi", "load_mask", "output_paths", "sidecar_path", "split_nifti", "write_json_atomic",
           "write_nifti_atomic", "write_text_atomic"]
