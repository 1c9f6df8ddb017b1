"""The stream processor: Faust agents (the shell) around a pure core (`processors.core`)."""
