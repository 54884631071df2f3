"""Keep the standard library's `email` package importable next to the project's top-level email.py.

With the project root on sys.path (`python email.py`, `python -m pytest`, ...), `import email` finds our
script instead of the standard library, and everything that needs the real package breaks: smtplib,
http.client, importlib.metadata. email.py imports this module first; it loads the standard library's
package under its own name, so every later `import email...` gets the real one.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig


def install() -> None:
    current = sys.modules.get("email")
    if current is not None and hasattr(current, "__path__"):
        return  # the real package is already loaded
    stdlib_dir = sysconfig.get_paths()["stdlib"]
    spec = importlib.util.spec_from_file_location(
        "email", os.path.join(stdlib_dir, "email", "__init__.py"),
        submodule_search_locations=[os.path.join(stdlib_dir, "email")],
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Replacing the entry even while our email.py is being imported as "email": the import system
    # returns whatever sys.modules holds once that import finishes, i.e. the real package.
    sys.modules["email"] = module
    spec.loader.exec_module(module)


install()
