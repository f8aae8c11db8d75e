"""Pictures and pages: surface renders, QC figures and self-contained HTML."""
