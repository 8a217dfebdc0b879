"""Scores against the truth and the peers: metrics, the evaluation of a model on simulated pairs,
the peer methods (DIPY mppca, MRtrix3 dwidenoise, Patch2Self), the phantom benchmark and the demo.
"""
