"""What the console shows, computed without Textual: run tails, downsampled series, charts, formats, the
config form's document. The Textual widgets in :mod:`lab.tui` only display these, so they are tested
(and benchmarked) on their own; ``lab runs`` and ``lab compare`` share the number formats.
"""
