"""`python -m timm_t2t` runs the `timm-t2t` command."""
from .cli import main

main()
