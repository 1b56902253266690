"""abaw: facial affect analysis with MAE-pretrained ViTs and facial priors (EMMA, Masked CoTEX)."""

__version__ = "0.1.0"
