import sys

from search.cli import main

if __name__ == "__main__":  # (a process multiprocessing starts may import this module: it must not run the command again)
    sys.exit(main())
