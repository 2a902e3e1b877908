"""A finished job as a FHIR `DiagnosticReport` (`GET /v1/predictions/{job_id}/fhir`).

The report is built and validated with `fhir.resources.R4B`. DiagnosticReport and Observation
are the same in FHIR R4 and R4B (R4B changed only medication-definition and evidence resources),
so an R4 client reads the answer as it is.

What it holds, and why:

* `DiagnosticReport`: `identifier` = the job id (system `JOB_IDENTIFIER_SYSTEM`), `code` the LOINC
  "Diagnostic imaging report" (`REPORT_CODE`, as in the DICOM SR the PACS node sends), `issued` =
  when the job finished, no `subject`: the service keeps no patient identifier, the caller links
  the report to its patient by the job id it was given at upload.
* A succeeded job: one contained `Observation` (`#prediction`), status `preliminary` (no person
  signed it): `valueCodeableConcept` SNOMED CT Pneumonia or Normal (`LABEL_CONCEPTS`), with
  components for the calibrated probability and the threshold (UCUM `1`), the operating point
  (site, who calibrated it), the subtype it leans to (SNOMED CT bacterial or viral pneumonia),
  whether the film lies in the validated population and each reason it does not; `method` and
  `device` name the model and its version. The report is `preliminary` too.
* Once a reader gave feedback (`shared.feedback`): a second contained `Observation` (`#reader`,
  `final`) with the reader's label and subtype, its `performer` the reader as given to the
  feedback route; the report is `final` when the reader confirmed the model's label, `amended`
  when the reader corrected it. The reader's free-text comment is left out.
* A failed job (a refused film included): status `cancelled`, the reason in `conclusion`, no
  Observation.
"""

from __future__ import annotations

import html
import re
from decimal import Decimal
from typing import Literal

from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.narrative import Narrative
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource

from shared.jobs.records import JobRecord, JobStatus
from shared.schemas import Feedback, PredictionResult
from shared.scope import describe

FHIR_MEDIA_TYPE = "application/fhir+json"

# Systems of the service's own identifiers and codes (URNs: nothing to resolve).
JOB_IDENTIFIER_SYSTEM = "urn:cxr-pneumonia:job"
MODEL_IDENTIFIER_SYSTEM = "urn:cxr-pneumonia:model"
CODE_SYSTEM = "urn:cxr-pneumonia:fhir"
LABEL_SYSTEM = "urn:cxr-pneumonia:label"
SCOPE_REASON_SYSTEM = "urn:cxr-pneumonia:scope-reason"
CALIBRATED_BY_SYSTEM = "urn:cxr-pneumonia:calibrated-by"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

PREDICTION_ID, READER_ID = "prediction", "reader"
# Component codes (CODE_SYSTEM): one per statement of the JSON result.
PROBABILITY = "pneumonia-probability"
THRESHOLD = "decision-threshold"
OPERATING_POINT_SITE = "operating-point-site"
CALIBRATED_BY = "operating-point-calibrated-by"
SUBTYPE = "pneumonia-subtype"
IN_VALIDATED_POPULATION = "in-validated-population"
OUTSIDE_VALIDATED_POPULATION = "outside-validated-population"

LABEL_CONCEPTS: dict[str, tuple[str, str]] = {
    "PNEUMONIA": ("233604007", "Pneumonia"),
    "NORMAL": ("17621005", "Normal"),
}
SUBTYPE_CONCEPTS: dict[str, tuple[str, str]] = {
    "bacterial": ("53084003", "Bacterial pneumonia"),
    "viral": ("75570004", "Viral pneumonia"),
}
_XHTML = '<div xmlns="http://www.w3.org/1999/xhtml"><p>{}</p></div>'
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

ReportStatus = Literal["preliminary", "final", "amended", "cancelled"]


def _concept(system: str, code: str, display: str, text: str | None = None) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=system, code=code, display=display)],
                           text=text or display)


def _local(code: str, text: str) -> CodeableConcept:
    return _concept(CODE_SYSTEM, code, text)


def _ratio(value: float) -> Quantity:
    # The float's shortest repr, so the JSON value is the one the JSON result shows.
    return Quantity(value=Decimal(repr(value)), unit="1", system=UCUM, code="1")


def label_concept(label: str) -> CodeableConcept:
    """SNOMED CT Pneumonia or Normal, with the service's own label beside it."""
    code, display = LABEL_CONCEPTS[label]
    return CodeableConcept(coding=[Coding(system=SNOMED, code=code, display=display),
                                   Coding(system=LABEL_SYSTEM, code=label, display=label)],
                           text=label)


def subtype_concept(subtype: str) -> CodeableConcept:
    code, display = SUBTYPE_CONCEPTS[subtype]
    return _concept(SNOMED, code, display, text=subtype)


REPORT_CODE = _concept(LOINC, "18748-4", "Diagnostic imaging report")
REPORT_CATEGORY = _concept(V2_0074, "RAD", "Radiology")
FINDING_CODE = _concept(DICOM, "121071", "Finding",
                        text="Chest X-ray: pneumonia or normal")
IMAGING_CATEGORY = _concept(OBSERVATION_CATEGORY, "imaging", "Imaging")


def report_status(record: JobRecord) -> ReportStatus:
    """`cancelled` for a failed job, `preliminary` until a reader's feedback, then `final` when
    the reader confirmed the label or `amended` when the reader corrected it."""
    if record.status == JobStatus.FAILED:
        return "cancelled"
    if record.feedback is None:
        return "preliminary"
    return "final" if record.feedback.agrees else "amended"


def _components(result: PredictionResult) -> list[ObservationComponent]:
    components = [
        ObservationComponent(code=_local(PROBABILITY, "Calibrated probability of pneumonia"),
                             valueQuantity=_ratio(result.pneumonia_probability)),
        ObservationComponent(code=_local(THRESHOLD, "Decision threshold"),
                             valueQuantity=_ratio(result.threshold)),
    ]
    if result.operating_point is not None:
        point = result.operating_point
        components += [
            ObservationComponent(code=_local(OPERATING_POINT_SITE, "Operating point: site"),
                                 valueString=point.site),
            ObservationComponent(
                code=_local(CALIBRATED_BY, "Operating point: calibrated by"),
                valueCodeableConcept=_concept(CALIBRATED_BY_SYSTEM, point.calibrated_by,
                                              point.calibrated_by)),
        ]
    if result.subtype is not None:
        components.append(ObservationComponent(
            code=_local(SUBTYPE, "Pneumonia subtype the model leans to"),
            valueCodeableConcept=subtype_concept(result.subtype)))
    if result.scope is not None:
        components.append(ObservationComponent(
            code=_local(IN_VALIDATED_POPULATION, "In the validated population"),
            valueBoolean=result.scope.in_validated_population))
        for reason in result.scope.reasons:
            components.append(ObservationComponent(
                code=_local(OUTSIDE_VALIDATED_POPULATION, "Outside the validated population"),
                valueCodeableConcept=_concept(SCOPE_REASON_SYSTEM, str(reason),
                                              describe([reason]))))
    return components


def model_text(result: PredictionResult) -> str:
    return f"{result.model.name} version {result.model.version}"


def prediction_observation(record: JobRecord, result: PredictionResult) -> Observation:
    """The model's reading of the film (`preliminary`: no person signed it)."""
    model = model_text(result)
    notes: list[Annotation] = []
    if result.scope is not None and not result.scope.in_validated_population:
        notes.append(Annotation(text="Outside the validated population: "
                                     f"{describe(result.scope.reasons)}. Read the answer with "
                                     "that in mind."))
    return Observation(
        id=PREDICTION_ID, status="preliminary", category=[IMAGING_CATEGORY], code=FINDING_CODE,
        issued=record.finished_at, valueCodeableConcept=label_concept(result.label),
        component=_components(result),
        method=CodeableConcept(text=f"Machine-learning model {model}: calibrated probability "
                                    "compared with the decision threshold"),
        device=Reference(display=model,
                         identifier=Identifier(system=MODEL_IDENTIFIER_SYSTEM,
                                               value=f"{result.model.name}/"
                                                     f"{result.model.version}")),
        note=notes or None)


def reader_observation(feedback: Feedback) -> Observation:
    """The reader's label, as given to the feedback route (`final`: a person read the film)."""
    components = []
    if feedback.subtype is not None:
        components.append(ObservationComponent(
            code=_local(SUBTYPE, "Pneumonia subtype"),
            valueCodeableConcept=subtype_concept(feedback.subtype)))
    return Observation(
        id=READER_ID, status="final", category=[IMAGING_CATEGORY], code=FINDING_CODE,
        issued=feedback.confirmed_at, valueCodeableConcept=label_concept(feedback.label),
        performer=[Reference(display=feedback.reader)], component=components or None,
        derivedFrom=[Reference(reference=f"#{PREDICTION_ID}")])


def _conclusion(record: JobRecord) -> str:
    if record.status == JobStatus.FAILED:
        failure = record.failure
        if failure is None:
            return "Not analysed: the job failed."
        return f"Not analysed ({failure.code}): {failure.message}"
    result = record.result
    assert result is not None
    side = "at or above" if result.pneumonia_probability >= result.threshold else "below"
    text = (f"{result.label} (model {model_text(result)}): probability of pneumonia "
            f"{result.pneumonia_probability:.3f}, {side} the threshold {result.threshold:.3f}")
    if result.subtype is not None and result.label == "PNEUMONIA":
        text += f"; leans to {result.subtype}"
    text += "."
    if result.scope is not None and not result.scope.in_validated_population:
        text += f" Outside the validated population: {describe(result.scope.reasons)}."
    feedback = record.feedback
    if feedback is None:
        return text + " Not yet reviewed by a reader."
    verdict = "Confirmed" if feedback.agrees else "Corrected"
    return text + f" {verdict} by reader {feedback.reader}: {feedback.label}."


def diagnostic_report(record: JobRecord) -> DiagnosticReport:
    """The FHIR R4B DiagnosticReport of a finished job (validated as it is built)."""
    if not record.status.finished:
        raise ValueError("only a finished job has a report")
    status = report_status(record)
    contained: list[Resource] = []
    if record.status == JobStatus.SUCCEEDED:
        if record.result is None:
            raise ValueError("a succeeded job without a result")
        contained.append(prediction_observation(record, record.result))
        if record.feedback is not None:
            contained.append(reader_observation(record.feedback))
    label_code = None
    if record.result is not None and status != "cancelled":
        shown = record.feedback.label if record.feedback is not None else record.result.label
        label_code = [label_concept(shown)]
    conclusion = _conclusion(record)
    return DiagnosticReport(
        id=record.job_id if _FHIR_ID.match(record.job_id) else None,
        text=Narrative(status="generated", div=_XHTML.format(html.escape(conclusion))),
        identifier=[Identifier(system=JOB_IDENTIFIER_SYSTEM, value=record.job_id)],
        status=status, category=[REPORT_CATEGORY], code=REPORT_CODE,
        issued=record.finished_at,
        contained=contained or None,
        result=[Reference(reference=f"#{obs.id}") for obs in contained] or None,
        resultsInterpreter=([Reference(display=record.feedback.reader)]
                            if record.feedback is not None and status != "cancelled" else None),
        conclusion=conclusion, conclusionCode=label_code)


def report_json(record: JobRecord) -> str:
    """The report as FHIR JSON (empty elements left out, as FHIR requires)."""
    return diagnostic_report(record).model_dump_json(exclude_none=True)
