"""The paper's figures as experiments: each a frozen config, rows with provenance and PNGs.

Also ``progress``: the stage log of a long experiment with an ETA from measured stage costs
(used by the generalization-gap experiment, ``lbgap_tf.gap``).
"""
