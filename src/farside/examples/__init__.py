"""Example enclaves and drivers shipped with farside (``farside demo`` runs the quickstart)."""
