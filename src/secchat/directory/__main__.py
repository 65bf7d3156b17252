"""``python -m secchat.directory serve ...`` (the same as ``secchat directory serve ...``)."""

from secchat.directory.cli import directory_app

directory_app(prog_name="secchat directory")
