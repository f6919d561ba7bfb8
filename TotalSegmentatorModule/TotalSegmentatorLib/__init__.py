"""The TotalSegmentator module's library (TotalSegmentator.py wires the panel to it).

- logic.py: the Logic, the documented Python entry point; imports no Qt, so it runs and is
  tested with slicer-core in plain Python.
- operation.py: the one interface of every background operation (poll / cancel / outcome);
  job.py (a segmentation), review_edit.py (a vessel-review edit), installation.py (the
  first-run install), runner.py (the engine worker and CLI processes), process.py
  (processes read without threads), diagnosis.py (a crash's cause and fix).
- dependencies.py (what to install), choices.py (what the panel offers), startup.py (the
  checks when Slicer loads the module), selftest.py (the self-test's phantom and model).
- sections.py: Qt wiring of the panel's sections (devices, structures, Advanced, review).
"""
