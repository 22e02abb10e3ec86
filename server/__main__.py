import sys

from server.run.main import main

sys.exit(main())
