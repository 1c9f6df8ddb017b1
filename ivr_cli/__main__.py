from ivr_cli.main import run

run()
