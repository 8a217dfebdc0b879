"""What the scanner measures: protocols and gradient tables (:mod:`~dwivae.physics.acquisition`),
signal models and their parameters (:mod:`~dwivae.physics.simulate`, :mod:`~dwivae.physics.tissue`),
noise and its floor (:mod:`~dwivae.physics.noise`), phantoms, and the DTI fit. No networks here.
"""
