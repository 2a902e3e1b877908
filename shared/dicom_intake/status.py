"""The DICOM status codes the service answers, for C-STORE (the DICOM node) and as STOW-RS Failure
Reasons (the gateway): one definition for both, since a film refused one way is refused the same
way over the other.

Values from PS3.4 Annex B.2.3 (Storage Service Class) and PS3.7 C.4 (general statuses); pynetdicom
describes each in `pynetdicom.status.STORAGE_SERVICE_CLASS_STATUS`.
"""

from __future__ import annotations

# Written out, not read from pynetdicom: the gateway's image (STOW-RS) has no pynetdicom.
SUCCESS = 0x0000
# Storage or the queue is down for now; the sender may try again later.
OUT_OF_RESOURCES = 0xA700
# The instance is malformed or not a usable image; resending the same bytes cannot succeed.
CANNOT_UNDERSTAND = 0xC000
# An unexpected error on our side.
PROCESSING_FAILURE = 0x0110
# The sender stored a different image under this SOP Instance UID before.
DUPLICATE_SOP_INSTANCE = 0x0111
# Not a storage SOP class the service reads (STOW-RS).
SOP_CLASS_NOT_SUPPORTED = 0x0122
# A part whose Study Instance UID is not the study the STOW-RS request path names: an error of the
# "cannot understand" class (0xCxxx); the value is the one dcm4chee-arc answers for it, as the
# standard defines none.
STUDY_MISMATCH = 0xC409
