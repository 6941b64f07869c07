import sys

from trainframe.cli import main

sys.exit(main())
