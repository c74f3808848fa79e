"""Experiments built on the library, not part of it: the DNMF paper re-evaluation.

Nothing in the library imports this package; its data are given by path
(``scalenmf dnmf evaluate --data DIR``).
"""
