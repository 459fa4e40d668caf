"""The frame fuzzer: valid, mutated and garbage frames against the codec and a real monitor.

Run it with ``python -m tools.fuzz codec|live``; ``cli.py`` says what it checks and how.

The modules: ``schema`` (valid messages, from each field type's declaration),
``mutations`` (ways to break a frame), ``oracle`` (the error class PROTOCOL.md
gives a frame), ``codec_mode`` (the in-process target), ``model`` (what a
monitor session must answer), ``session`` (one live session, checked frame by
frame), ``live`` (the monitor processes and their sessions), ``run`` (options,
findings, summary) and ``cli``. ``corpus/regression`` holds the inputs every
test run replays; ``corpus/found`` is where a run saves what it finds.
"""
