"""DICOM instances arriving over C-STORE or STOW-RS: screening, de-identification, job intake."""
