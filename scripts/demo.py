"""`make demo`: start the service (as `make up` does), send the repo's sample X-rays through the
HTTPS API and one of them as a DICOM through the DICOM node, print the results, and leave
everything running for the web page."""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # noqa: E402 - the sibling script

SAMPLE_DIR = stack.ROOT / "data" / "sample"


def _truth(path: Path) -> str:
    return path.parent.name


def dicom_film(path: Path) -> Dataset:
    """A sample JPEG as the DX instance a modality would send (made-up demo identifiers)."""
    pixels = np.asarray(Image.open(path).convert("L"))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    today = datetime.now(UTC).strftime("%Y%m%d")
    ds.update({"PatientName": "DEMO^PATIENT", "PatientID": "DEMO-0001", "PatientSex": "O",
               "PatientBirthDate": "", "PatientAge": "006Y", "StudyDate": today, "StudyTime": "",
               "StudyID": "1", "AccessionNumber": "DEMO-ACC-1", "ReferringPhysicianName": "",
               "Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA",
               "SeriesNumber": 1, "InstanceNumber": 1, "PresentationIntentType": "FOR PRESENTATION",
               "ImageType": ["ORIGINAL", "PRIMARY"], "Rows": pixels.shape[0],
               "Columns": pixels.shape[1], "SamplesPerPixel": 1,
               "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 8, "BitsStored": 8,
               "HighBit": 7, "PixelRepresentation": 0})
    ds.PixelData = pixels.tobytes()
    return ds


@contextmanager
def demo_pacs(ae_title: str, port: int) -> Iterator[queue.Queue]:
    """A storage SCP standing in for the hospital's PACS: what the DICOM node sends back."""
    received: queue.Queue = queue.Queue()

    def on_store(event) -> int:
        received.put(event.dataset)
        return 0x0000

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield received
    finally:
        server.shutdown()


def sr_finding(sr: Dataset) -> str:
    """The text and numbers of an SR's content items, one line."""
    parts = []
    for item in getattr(sr, "ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item \
            else ""
        value = (item.get("TextValue") or
                 (item.ConceptCodeSequence[0].CodeMeaning if "ConceptCodeSequence" in item else "")
                 or (str(item.MeasuredValueSequence[0].NumericValue)
                     if "MeasuredValueSequence" in item else ""))
        if value:
            parts.append(f"{name}: {value}" if name else str(value))
    return "; ".join(parts)


def send_through_dicom_node(sample: Path) -> None:
    """C-STORE one film to the DICOM node and wait for its reports at the demo PACS."""
    ae_title, _, address = stack.SETTINGS.pacs_destination.partition("@")
    host, _, port = address.rpartition(":")
    print(f"\nSending {sample.name} as a DICOM by C-STORE to AE CXR at localhost:{stack.PACS_PORT} "
          f"(reports come back to {ae_title} at {host}:{port}) ...")
    with demo_pacs(ae_title, int(port)) as received:
        scu = AE(ae_title="DEMOMODALITY")
        scu.add_requested_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", stack.PACS_PORT, ae_title="CXR")
        if not assoc.is_established:
            print("  the DICOM node refused the association")
            return
        status = assoc.send_c_store(dicom_film(sample))
        assoc.release()
        print(f"  C-STORE status 0x{getattr(status, 'Status', 0xFFFF):04X}")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                instance = received.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            kind = "SR" if instance.Modality == "SR" else instance.Modality
            detail = sr_finding(instance) if kind == "SR" else "heatmap (Secondary Capture)"
            # The original identifiers, from the job's re-identification key (docs/privacy.md).
            filed = (f"patient {instance.get('PatientID', '') or '(none)'} "
                     f"{instance.get('PatientName', '') or ''}, accession "
                     f"{instance.get('AccessionNumber', '') or '(none)'}")
            print(f"  received {kind} for {filed}: {detail}")
            if kind == "SR":
                return
        print("  no report arrived within 90 s (see var/log/report-sender.log)")


def main() -> None:
    stack.up()
    key = (stack.SETTINGS.demo_api_key.get_secret_value()
           or (stack.VAR / "demo-api-key").read_text().strip())
    base = f"https://localhost:{stack.GATEWAY_PORT}"
    images = sorted(p for p in SAMPLE_DIR.glob("*/*") if p.is_file() and p.suffix.lower() != ".md")
    print(f"\nSending {len(images)} sample X-rays from data/sample/ to {base}/v1/predictions ...\n")
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    with httpx.Client(base_url=base, headers=headers, verify=False, timeout=60) as client:
        jobs = []
        for path in images:
            response = client.post(
                "/v1/predictions", files={"file": (path.name, path.read_bytes())}
            )
            response.raise_for_status()
            jobs.append((path, response.json()["job_id"]))
        rows, correct = [], 0
        for path, job_id in jobs:
            job = client.get(f"/v1/predictions/{job_id}", params={"wait": 30}).json()
            result = job.get("result") or {}
            label = result.get("label", job["status"])
            correct += label == _truth(path)
            model = result.get("model") or {}
            rows.append(
                (
                    path.name,
                    _truth(path),
                    label,
                    result.get("pneumonia_probability"),
                    result.get("subtype") or "",
                    f"{model.get('name', '')} v{model.get('version', '')}",
                )
            )
    elapsed = time.monotonic() - started
    print(f"{'file':40s} {'truth':9s} {'label':9s} {'p(pneu)':>7s}  {'subtype':9s} model")
    for name, truth, label, prob, subtype, model in rows:
        prob_text = f"{prob:7.3f}" if isinstance(prob, float) else "      -"
        print(f"{name:40s} {truth:9s} {label:9s} {prob_text}  {subtype:9s} {model}")
    print(
        f"\n{correct}/{len(rows)} labels agree with the file's folder; "
        f"{elapsed:.1f}s for all of them."
    )
    print("(The samples come from the training data set: this shows the service works; the model's")
    print(" accuracy on images it never saw is in models/MODEL_CARD.md.)")
    send_through_dicom_node(images[-1])
    print(f"\nThe service is still running: open {base}/ (API key above), `make down` to stop it.")


if __name__ == "__main__":
    main()
