"""Start the gateway on a compose config whose `${NAME}` references (the served
`${MODEL}`) are filled in from the container's environment.

    python3 serve.py CONFIG [switchyard serve flags...]

Writes the filled-in config to $TMPDIR and replaces itself with
`switchyard serve --config FILLED [flags...]`. Only `${NAME}` (capitals, digits,
underscores) is replaced; a name that is not set stops the start with exit status 2
and says which. Standard library only: it runs in every gateway image before
Switchyard does. tests/deploy/test_deploy.py fills the configs the same way.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Mapping

REFERENCE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def fill(text: str, environ: Mapping[str, str]) -> str:
    """`text` with every `${NAME}` replaced by environ[NAME]; KeyError names a missing one."""
    missing = sorted({name for name in REFERENCE.findall(text) if not environ.get(name)})
    if missing:
        raise KeyError(", ".join(missing))
    return REFERENCE.sub(lambda match: environ[match.group(1)], text)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    source, flags = argv[0], argv[1:]
    with open(source, encoding="utf-8") as file:
        text = file.read()
    try:
        filled = fill(text, os.environ)
    except KeyError as exc:
        print(f"serve.py: {source} needs these variables set: {exc.args[0]}", file=sys.stderr)
        return 2
    fd, path = tempfile.mkstemp(prefix="switchyard-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(filled)
    os.execvp("switchyard", ["switchyard", "serve", "--config", path, *flags])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
