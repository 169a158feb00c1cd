"""The statistics: rings of time buckets (window), a reference's frozen bins (reference), a batch's values made
bin indices (binning), drift measures (drift), quality from summed counts (quality), histograms (histogram).

Everything here works on plain columns (numpy arrays, lists) and the config; it never imports ingest, the engine
or serve (tests/test_layout.py checks).
"""
