"""`python -m lab.protocols.arq`: the ARQ lesson (lab.protocols.arq.lesson)."""

import sys

from lab.protocols.arq.lesson import main

sys.exit(main(sys.argv[1:]))
