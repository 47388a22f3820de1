"""py_ecc (imported through x402's EVM signer) raises the recursion limit to 100,000 at
import; the app pins it back so deep recursion raises RecursionError instead of
overflowing the C stack (SIGSEGV, exit 139: reproduced against `bindu serve`)."""

import sys

import py_ecc  # noqa: F401  (the import that raises the limit)

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
