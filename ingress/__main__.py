"""`python -m ingress`: the ingress under uvicorn with the project's HTTP limits (see ingress.server)."""

from config.settings import load_or_exit

load_or_exit()  # a bad setting stops the start in one line, before uvicorn imports the app
from ingress.server import main  # noqa: E402  (imports the app, which reads the settings)

main()
