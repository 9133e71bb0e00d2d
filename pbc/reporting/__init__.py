"""Figures, tables and the PDF report, from artefacts only (the only place pbc imports
matplotlib), and the paper's numbers to print beside ours."""
