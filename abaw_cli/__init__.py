"""abaw: facial affect analysis with MAE-pretrained ViTs and facial priors (EMMA, Masked CoTEX).

From Python (abaw_cli.api; pandas DataFrames, loaded on first use so the CLI starts without pandas):

    import abaw_cli
    df = abaw_cli.predict_frames("clip.mp4")          # the per-frame table of `abaw predict`
    df = abaw_cli.read_table("predictions/clip.csv")
"""

__version__ = "0.1.0"

# Not `predict`: abaw_cli.predict is the subpackage behind the command.
_API = ("predict_frames", "read_table", "PredictInputError")


def __getattr__(name: str):
    if name in _API:
        from abaw_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'abaw_cli' has no attribute {name!r}")
