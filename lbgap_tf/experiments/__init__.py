"""Experiments built on training and measuring: the paper's figures (each a frozen config,
rows with provenance and PNGs) and accelerator setups compared.

Also ``progress``: the stage log of a long experiment with an ETA from measured stage costs
(used by the generalization-gap experiment, ``lbgap_tf.gap``).
"""
