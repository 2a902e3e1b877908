"""De-identification of a received instance after the DICOM Basic Application Level
Confidentiality Profile (PS3.15 Annex E, Table E.1-1), by walking the dataset with pydicom.

Direct identifiers are emptied (type 1/2 attributes the standard wants present) or removed;
instance UIDs are replaced by new UIDs derived from the old ones, so the same instance always maps
to the same replacement and references between instances stay consistent; private tags go. The
dataset records what was done (Patient Identity Removed, De-identification Method (Code) Sequence).
"""

from __future__ import annotations

from copy import deepcopy

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

METHOD = "DICOM PS3.15 E.1 Basic Application Level Confidentiality Profile"
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")

# Action Z: present but empty.
EMPTIED = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
    "StudyID", "AccessionNumber", "StudyDate", "StudyTime", "ContentCreatorName",
    "VerifyingObserverName", "PersonName",
})
# Action X (or X/Z/D where removal is allowed): dropped.
REMOVED = frozenset({
    "PatientBirthTime", "PatientBirthName", "PatientMotherBirthName", "OtherPatientIDs",
    "OtherPatientNames", "OtherPatientIDsSequence", "IssuerOfPatientID", "PatientAddress",
    "PatientTelephoneNumbers", "PatientTelecomInformation", "PatientSize",
    "PatientWeight", "PatientComments", "PatientReligiousPreference", "PatientSexNeutered",
    "PatientInsurancePlanCodeSequence", "PatientState", "MedicalRecordLocator", "MilitaryRank",
    "BranchOfService", "EthnicGroup", "Occupation", "CountryOfResidence", "RegionOfResidence",
    "AdditionalPatientHistory", "MedicalAlerts", "Allergies", "SmokingStatus", "PregnancyStatus",
    "LastMenstrualDate", "AdmittingDiagnosesDescription", "AdmissionID", "ResponsiblePerson",
    "ResponsibleOrganization", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "ReferringPhysicianIdentificationSequence",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "OperatorsName",
    "OperatorIdentificationSequence", "RequestingPhysician", "RequestingService",
    "RequestAttributesSequence", "StationName", "DeviceSerialNumber", "PerformedProcedureStepID",
    "PerformedProcedureStepDescription", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "ScheduledProcedureStepDescription",
    "RequestedProcedureDescription", "StudyDescription", "SeriesDescription", "ImageComments",
    "AcquisitionComments", "StudyComments", "InterpretationText", "TextComments",
    "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime",
    "ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
    "OverlayComments", "OverlayData", "DerivationDescription", "ProtocolName",
    "RequestedProcedureID", "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest", "ServiceEpisodeID", "CurrentPatientLocation",
    "ScheduledProcedureStepID",
})
# Action U: replaced by a consistent new UID.
REPLACED_UIDS = frozenset({
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "MediaStorageSOPInstanceUID",
    "ReferencedSOPInstanceUID", "FrameOfReferenceUID", "SynchronizationFrameOfReferenceUID",
    "IrradiationEventUID", "InstanceCreatorUID", "StorageMediaFileSetUID",
    "ReferencedFrameOfReferenceUID", "RelatedFrameOfReferenceUID", "DimensionOrganizationUID",
})


def replacement_uid(original: str) -> str:
    """The UID that stands in for `original` in de-identified copies (same input, same output)."""
    return generate_uid(entropy_srcs=["cxr-deidentify", str(original)])


def _is_overlay(element: DataElement) -> bool:
    """Overlay planes (groups 6000-601E: label, description, bits) are not needed and can name."""
    return 0x6000 <= element.tag.group <= 0x601E and element.tag.group % 2 == 0


def _apply_profile(dataset: Dataset, element: DataElement) -> None:
    keyword = element.keyword
    if keyword in REMOVED or _is_overlay(element):
        del dataset[element.tag]
    elif keyword in EMPTIED:
        element.value = Sequence() if element.VR == "SQ" else None
    elif keyword in REPLACED_UIDS and element.value:
        if element.VM > 1:
            element.value = [replacement_uid(uid) for uid in element.value]
        else:
            element.value = replacement_uid(element.value)


def deidentify(dataset: Dataset) -> Dataset:
    """A de-identified copy of `dataset` (the original is not changed)."""
    copy = deepcopy(dataset)
    copy.remove_private_tags()
    copy.walk(_apply_profile)
    if getattr(copy, "file_meta", None) is not None:
        copy.file_meta.walk(_apply_profile)
    copy.PatientIdentityRemoved = "YES"
    copy.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    copy.DeidentificationMethodCodeSequence = Sequence([code])
    return copy
