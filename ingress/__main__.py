"""`python -m ingress`: the ingress under uvicorn with the project's HTTP limits (see ingress.server)."""

from ingress.server import main

main()
