"""lbgap_tf: the large-batch generalization gap (Keskar et al., ICLR 2017) in TensorFlow/Keras."""

__version__ = "0.1.0"
