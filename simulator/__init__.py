"""Dress-rehearsal simulator for DICOM routing.

Describe a site as a topology (modalities, routers, PACS, viewers, real
external systems, and the links between them), replay a corpus through it
as a scenario, and read a run log that says what arrived where and why
everything else failed, by cause and by hop.
"""

__version__ = "0.1.0"
