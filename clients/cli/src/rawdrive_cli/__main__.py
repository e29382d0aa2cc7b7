import sys

from rawdrive_cli.main import main

sys.exit(main())
