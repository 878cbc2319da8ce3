"""The lab console: a Textual TUI over the same engine and run directories as the ``lab`` commands.

``lab`` with no arguments opens it (:func:`lab.tui.launch.open_console`). It
never trains in its own process: runs are ``python -m lab run`` processes it
starts detached and then only watches through their run directories, so a run
started headless over SSH shows up like one started here, and closing the
console leaves runs training.
"""
