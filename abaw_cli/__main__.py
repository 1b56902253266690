from abaw_cli.cli import app

app()
