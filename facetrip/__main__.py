"""``python -m facetrip`` is the ``facetrip`` command."""

from facetrip.cli import main

main()
