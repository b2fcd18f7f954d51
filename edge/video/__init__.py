"""Live and recorded ultrasound: frame sources, the imaging sector, real-time analysis, clips."""
