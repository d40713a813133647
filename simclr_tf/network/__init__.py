"""The network: ResNet encoder, heads, the SimCLR model and the importer of original checkpoints."""
