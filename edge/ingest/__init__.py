"""Where studies come from: a DICOM C-STORE listener, a watched drop folder (and video, later).

Every source hands bytes to `Pipeline.ingest` through the guarded decoder, so a hostile or
broken file becomes a coded refusal and never crashes or hangs the agent.
"""
