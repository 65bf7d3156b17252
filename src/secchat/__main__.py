"""``python -m secchat``: the same command line as ``secchat``."""

from secchat.app.cli import main

if __name__ == "__main__":
    main()
