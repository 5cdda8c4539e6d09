"""Inference: film readers (PNG/JPEG/DICOM), the predictor (MC dropout), Grad-CAM, triage, and
the web service."""
