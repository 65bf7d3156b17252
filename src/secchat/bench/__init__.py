"""The thesis's experiments (§3) as figures: ``secchat bench`` (see :mod:`.figures`).

:mod:`.modes` is the registry of message modes that Figure 2 draws, :mod:`.setup` measures group
set-up (Figure 1), :mod:`.peers` wraps the peer systems of the optional ``secchat[peers]`` extra.
"""
