"""The `ivr` command line: `ivr tail TOPIC`, `ivr alerts`, `ivr topics`, `ivr simulate`."""
