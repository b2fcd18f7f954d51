"""Results back into the hospital's systems: DICOM objects for the PACS (`sr.py`), the C-STORE
sender (`cstore.py`) and the exporter's queue and loop (`pacs_export.py`)."""
