"""A model with everything around it: `Policy` (policy.py) owns the processor, normalization, checkpoint I/O
(checkpoint.py), `predict` and the served metadata; the model (a Framework nn.Module) does loss and sampling only."""
