import sys

from lab.tui.launch import open_console

sys.exit(open_console(sys.argv[1:]))
