"""The toy world: a synthetic world and a small pretrained model where TI learning can be verified on a CPU."""
