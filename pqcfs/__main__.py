import sys

from pqcfs.cli.main import main

sys.exit(main())
