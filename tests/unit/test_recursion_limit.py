"""A dependency may raise the recursion limit at import (py_ecc, pulled in by some
eth-account versions, sets 100,000); the app pins it back so deep recursion raises
RecursionError instead of overflowing the C stack (SIGSEGV, exit 139: reproduced against
`bindu serve`). The test raises the limit itself: whether py_ecc is installed depends on
the pinned versions."""

import sys

from bindu.server.app import RECURSION_LIMIT, create_app
from bindu.settings import Settings


def test_create_app_pins_the_recursion_limit(tmp_path):
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)  # what py_ecc's import does
    try:
        create_app(Settings(storage={"url": f"sqlite:///{tmp_path}/b.db"}), lambda h: "x")
        assert sys.getrecursionlimit() == RECURSION_LIMIT == 1000
    finally:
        sys.setrecursionlimit(previous)
