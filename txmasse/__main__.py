"""
python -m txmasse: the masse command.
"""

from txmasse.cli import main

main()
