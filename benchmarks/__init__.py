"""absl benchmark binaries: thin glue from flags to lbgap_tf library calls."""
