"""Studies built on the library: the benchmark grid (``grid``), the regression check (``regression``), and the
embedded world's measurements — D-Fusion on the exact verifier (``fusion_study``), the shipped model's alignment
(``quality``) and its text encoder (``text_probe``). Each is a ``dfusion`` command; nothing in the library imports
this package.
"""
