"""Interoperability with the hospital's own systems: DICOM (PACS) and FHIR (EHR)."""
