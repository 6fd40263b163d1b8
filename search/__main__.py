import sys

from search.cli import main

if __name__ == "__main__":  # worker processes (multiprocessing's spawn) import this module too
    sys.exit(main())
