"""DICOM node: a C-STORE SCP that turns received X-rays into jobs, and the report sender."""
