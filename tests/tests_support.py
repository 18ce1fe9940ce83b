"""Helpers shared by test modules (fixtures that outlive one test cannot use the invoke fixture)."""

from __future__ import annotations

import sys
from typing import Callable


def run_main(main: Callable[[], None], *args: object) -> int:
    saved = sys.argv
    sys.argv = ["prog", *map(str, args)]
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return 0
